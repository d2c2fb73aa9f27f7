"""The servers every other test stands on are real: OpenSearch with k-NN, and moto over HTTP."""

from lockstep import opensearch_node


def test_opensearch_is_the_pinned_version_with_knn(opensearch):
    assert opensearch.info()["version"]["number"] == opensearch_node.OPENSEARCH_VERSION
    plugins = opensearch.cat.plugins(format="json")
    assert "opensearch-knn" in {p["component"] for p in plugins}


def test_lucene_knn_query_returns_the_nearest_neighbour(opensearch, unique):
    index = f"{unique}-knn"
    opensearch.indices.create(
        index=index,
        body={
            "settings": {"index.knn": True},
            "mappings": {
                "properties": {
                    "v": {
                        "type": "knn_vector",
                        "dimension": 3,
                        "method": {"name": "hnsw", "engine": "lucene", "space_type": "l2"},
                    }
                }
            },
        },
    )
    vectors = {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1]}
    for doc_id, vector in vectors.items():
        opensearch.index(index=index, id=doc_id, body={"v": vector})
    opensearch.indices.refresh(index=index)
    hits = opensearch.search(
        index=index, body={"size": 1, "query": {"knn": {"v": {"vector": [0.1, 0.9, 0.1], "k": 1}}}}
    )
    assert hits["hits"]["hits"][0]["_id"] == "b"
    opensearch.indices.delete(index=index)


def test_versioned_bucket_keeps_both_versions(s3, unique):
    s3.create_bucket(Bucket=unique)
    s3.put_bucket_versioning(Bucket=unique, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=unique, Key="k", Body=b"one")["VersionId"]
    second = s3.put_object(Bucket=unique, Key="k", Body=b"two")["VersionId"]
    assert first != second
    versions = s3.list_object_versions(Bucket=unique, Prefix="k")["Versions"]
    assert {v["VersionId"] for v in versions} == {first, second}
    assert s3.get_object(Bucket=unique, Key="k", VersionId=first)["Body"].read() == b"one"


def test_ssm_parameter_round_trip(ssm, unique):
    name = f"/{unique}/live"
    ssm.put_parameter(Name=name, Value='{"version": "v1"}', Type="String")
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == '{"version": "v1"}'
