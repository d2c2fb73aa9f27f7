// One lockstep ModelRelease, pinned to v2 (green); v1 (blue) is the warm standby and its index is
// retained. Rolling back is the one-line change `pin: "v1"` followed by `pulumi up`: the live
// alias, the live pointer and the check move to v1; no endpoint or index is touched (a flip).
import * as lockstep from "@pulumi/lockstep";

const release = new lockstep.ModelRelease("release", {
    pin: "v2",
    slots: { blue: "v1", green: "v2" },
    retain: ["v1"],
    catalog: {
        model: "hashgram",
        versions: {
            v1: {
                artifactSha256: "f3c866472890bdf6f45b150964a78178224fd054565c771c7b2392684c583001",
                dimension: 192,
                spaceType: "cosinesimil",
            },
            v2: {
                artifactSha256: "65878d63f7a56f0f3f43bb489eaa0cae2949e93961ecbaa4e5b8ca6fb7ad4d8a",
                dimension: 192,
                spaceType: "cosinesimil",
            },
            v3: {
                artifactSha256: "1eca3059303e5e17796167119b94d95ebd641adac581b6aa1c60cf63ae44161c",
                dimension: 128,
                spaceType: "l2",
            },
        },
    },
    region: "eu-west-1",
    artifacts: { bucket: "acme-lockstep-ts-artifacts" },
    opensearch: {
        url: "https://search-acme-docs.eu-west-1.es.amazonaws.com",
        domainName: "acme-docs",
        auth: "sigv4",
        region: "eu-west-1",
        indexPrefix: "docs",
        shards: 2,
        replicas: 1,
    },
    corpus: { bucket: "acme-lockstep-ts-corpus", key: "corpus/docs.jsonl" },
    endpoints: {
        imageUri: "123456789012.dkr.ecr.eu-west-1.amazonaws.com/lockstep-serve:0.1.0",
        instanceType: "ml.m5.large",
        instanceCount: 2,
        deployment: { trafficRouting: "CANARY", canaryPercent: 10, waitSeconds: 600 },
    },
    check: { recallFloor: 0.7 },
});

export const pin = release.pin;
export const liveIndex = release.liveIndex;
export const liveEndpoint = release.liveEndpoint;
export const slots = release.slots;
export const checkRecord = release.checkRecord;
