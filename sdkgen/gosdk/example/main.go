// The Go counterpart of examples/typescript/index.ts, compiled against the generated Go SDK by
// sdkgen/build.sh (it copies this directory beside the generated package; not a module here).
package main

import (
	"example.com/pulumi-lockstep/sdk/go/lockstep"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

func main() {
	str, num := pulumi.StringRef, pulumi.IntRef
	version := func(sha string, dim int, space string) lockstep.CatalogVersionArgs {
		return lockstep.CatalogVersionArgs{ArtifactSha256: sha, Dimension: dim, SpaceType: space}
	}
	pulumi.Run(func(ctx *pulumi.Context) error {
		release, err := lockstep.NewModelRelease(ctx, "release", &lockstep.ModelReleaseArgs{
			Pin:    "v2",
			Slots:  lockstep.SlotVersionsArgs{Blue: str("v1"), Green: str("v2")},
			Retain: []string{"v1"},
			Catalog: lockstep.ReleaseCatalogArgs{
				Model: "hashgram",
				Versions: map[string]lockstep.CatalogVersionArgs{
					"v1": version("f3c866472890bdf6f45b150964a78178224fd054565c771c7b2392684c583001", 192, "cosinesimil"),
					"v2": version("65878d63f7a56f0f3f43bb489eaa0cae2949e93961ecbaa4e5b8ca6fb7ad4d8a", 192, "cosinesimil"),
					"v3": version("1eca3059303e5e17796167119b94d95ebd641adac581b6aa1c60cf63ae44161c", 128, "l2"),
				},
			},
			Region:    str("eu-west-1"),
			// Where things are takes outputs of the program's own resources (pulumi.String… or an Output).
			Artifacts: lockstep.ArtifactBucketArgs{Bucket: pulumi.String("acme-lockstep-go-artifacts")},
			Opensearch: lockstep.OpenSearchIndexesArgs{
				Url:         pulumi.StringPtr("https://search-acme-docs.eu-west-1.es.amazonaws.com"),
				DomainName:  pulumi.StringPtr("acme-docs"),
				Auth:        pulumi.StringPtr("sigv4"),
				Region:      pulumi.StringPtr("eu-west-1"),
				IndexPrefix: str("docs"),
				Shards:      pulumi.IntPtr(2),
				Replicas:    pulumi.IntPtr(1),
			},
			Corpus: lockstep.CorpusLocationArgs{
				Bucket: pulumi.String("acme-lockstep-go-corpus"), Key: pulumi.StringPtr("corpus/docs.jsonl"),
			},
			Endpoints: lockstep.SageMakerEndpointsArgs{
				ImageUri:     pulumi.StringPtr("123456789012.dkr.ecr.eu-west-1.amazonaws.com/lockstep-serve:0.1.0"),
				InstanceType: pulumi.StringPtr("ml.m5.large"),
				Deployment: &lockstep.BlueGreenDeploymentArgs{
					TrafficRouting: str("CANARY"), CanaryPercent: num(10), WaitSeconds: num(600),
				},
			},
			Check: &lockstep.ConsistencyCheckArgs{RecallFloor: pulumi.Float64Ptr(0.7)},
		})
		if err != nil {
			return err
		}
		ctx.Export("pin", release.Pin)
		ctx.Export("liveIndex", release.LiveIndex)
		ctx.Export("liveEndpoint", release.LiveEndpoint)
		ctx.Export("slots", release.Slots)
		ctx.Export("checkRecord", release.CheckRecord)
		return nil
	})
}
