"""The Pulumi program under the SDK's mock runtime: register it, capture every resource's inputs.

No Pulumi engine runs: `pulumi.runtime.set_mocks` answers each registration like a provider that
accepted it, and the inputs are recorded so two registrations compare input by input the way the
engine would diff them.
"""

from __future__ import annotations

import asyncio

import pulumi

ACCOUNT = "123456789012"
CHECK = "lockstep:index:Check"
CHECK_STDOUT = '{"consistent": true, "checks": []}'
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"  # the wire signature of a secret value


def normalize(value):
    """Plain, comparable data: assets become (kind, path), secrets ("secret", value)."""
    if isinstance(value, pulumi.FileAsset):
        return ("FileAsset", value.path)
    if isinstance(value, dict) and SECRET_SIG in value.values():
        return ("secret", normalize(value["value"]))
    if isinstance(value, dict):
        return {key: normalize(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalize(item) for item in value]
    return value


class CaptureMocks(pulumi.runtime.Mocks):
    """Records every resource's type and inputs; answers like a provider that accepted them.
    The promotion gate's reads of stack outputs answer with `upstream_verified` as another stack's
    verifiedVersions output and `deployed_slots` as this stack's own slots output."""

    def __init__(self, upstream_verified: tuple[str, ...] = ("v1", "v2", "v3"), deployed_slots: dict | None = None):
        self.resources: dict[str, dict] = {}
        self.upstream_verified = list(upstream_verified)
        self.deployed_slots = dict(deployed_slots or {})
        self.stack_reads: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources[args.name] = {"type": args.typ, "inputs": normalize(args.inputs), "custom": args.custom}
        if args.typ == "pulumi:pulumi:StackReference":
            return f"{args.name}-id", {
                "name": args.inputs.get("name"),
                "outputs": {"verifiedVersions": self.upstream_verified},
            }
        state = dict(args.inputs)
        state.setdefault("name", args.name)  # what auto-naming would give, deterministically
        if args.typ == "aws:iam/role:Role":
            state["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{args.name}"
        if args.typ == "aws:s3/bucket:Bucket":
            state["arn"] = f"arn:aws:s3:::{args.inputs['bucket']}"
        if args.typ == CHECK:
            state["record"] = CHECK_STDOUT
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "pulumi:pulumi:readStackOutputs":
            name = args.args["name"]
            self.stack_reads.append(name)
            own = name.endswith(f"/{pulumi.get_stack()}")
            return {"outputs": {"slots": self.deployed_slots} if own else {"verifiedVersions": self.upstream_verified}}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/ci", "userId": "ci", "id": ACCOUNT}
        return {}


class Registered:
    """What one evaluation registered: resource name -> {type, inputs, custom}."""

    def __init__(self, mocks: CaptureMocks, outputs: dict | None = None):
        self.resources = mocks.resources
        self.outputs = outputs

    @property
    def state(self) -> dict:
        """The outputs the body returned (a component's construct state), {} when none."""
        return self.outputs or {}

    def of_type(self, typ: str) -> dict[str, dict]:
        return {name: r["inputs"] for name, r in self.resources.items() if r["type"] == typ}

    def inputs(self, name: str) -> dict:
        return self.resources[name]["inputs"]


def changed_resources(before: Registered, after: Registered) -> set[str]:
    """Names whose inputs differ, plus those added or removed: what the engine would act on."""
    names = set(before.resources) | set(after.resources)
    return {
        name
        for name in names
        if before.resources.get(name, {}).get("inputs") != after.resources.get(name, {}).get("inputs")
    }


def run_mocked(
    body,
    *,
    stack: str,
    project: str = "lockstep",
    preview: bool = False,
    mocks: CaptureMocks | None = None,
    config: dict[str, str] | None = None,
    secret_keys: list[str] | None = None,
) -> Registered:
    """Run `body()` (which declares resources and may return an Output of a dict) under fresh mocks,
    with `config` as the stack's configuration (plain strings; `secret_keys` marked secret)."""
    mocks = mocks or CaptureMocks()
    # The mock runtime schedules on the thread's event loop; a test elsewhere that ran asyncio.run()
    # leaves the thread with none (RuntimeError: There is no current event loop).
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview)
    pulumi.runtime.set_all_config(config or {}, secret_keys=secret_keys or [])
    outputs: dict = {}

    @pulumi.runtime.test
    def program():
        result = body()
        if isinstance(result, pulumi.Output):
            return result.apply(lambda value: outputs.update(value) if isinstance(value, dict) else None)
        return None

    program()
    return Registered(mocks, outputs or None)


def register_release(settings, catalog, *, preview: bool = False) -> Registered:
    """The ModelRelease the program declares for validated `settings` (what __main__.py registers)."""
    from components.model_release import ModelRelease, release_args

    def body():
        release = ModelRelease("lockstep", release_args(settings, catalog))
        return pulumi.Output.all(pin=release.pin, live_index=release.live_index)

    # lockstep's provider configuration names the stack's region, as the stack file does.
    return run_mocked(body, stack=settings.stack, preview=preview, config={"lockstep:region": settings.region})
