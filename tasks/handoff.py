"""Stage `checkpoint` handed off to another worker: the unlearning runs as a flow run of a deployment
(`cku-unlearn` on the gpu pool, flows/unlearn_job.py) and this task reads its checkpoint back.

Only artifact references travel as parameters (store keys and content digests, a few hundred bytes);
the job loads model, examples and mask from the shared artifact store and publishes the checkpoint
there under the key this task computes itself (tasks.unlearn.checkpoint_key: both sides hash the same
inputs). Reading it back verifies the manifest and the sha256 of every file, so a partial or foreign
upload is never used. A checkpoint already in the store is reused without starting a job.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from cku_core.config import UnlearnConfig
from cku_core.errors import CKUError
from cku_core.store import Artifact, ArtifactStore, StoreError
from tasks._stage import Timer
from tasks.unlearn import STAGE, checkpoint_key, checkpoint_output

POLL_INTERVAL_S = 2  # how often the hand-off asks the API whether the job finished


# No `gpu` tag: this task only waits, and holding a slot of the `gpu` concurrency limit while the job's
# own (gpu-tagged) unlearn task waits for one would deadlock a limit of 1.
@task(name="unlearn-handoff", cache_policy=NO_CACHE)
def unlearn_on_deployment(deployment: str, model: dict[str, Any], examples: dict[str, Any], config: UnlearnConfig,
                          mask: dict[str, Any] | None = None, band: list[int] | None = None,
                          max_seconds: float | None = None, checkpoint_every: int | None = None) -> dict[str, Any]:
    """Unlearn as a flow run of `deployment` (FLOW/DEPLOYMENT) and return the checkpoint like `unlearn_stage` does.

    Not cached by Prefect: the store is the cache (a verified checkpoint under the key is reused).
    """
    config = UnlearnConfig.model_validate(config)
    key = checkpoint_key(model, examples, config, mask, band, max_seconds)
    store = ArtifactStore()
    with Timer() as t:
        artifact = store.get(STAGE, key)
        reused = artifact is not None
        if artifact is None:
            run_job(deployment, {"model": model, "examples": examples, "config": config.model_dump(mode="json"),
                                 "mask": mask, "band": band, "max_seconds": max_seconds,
                                 "checkpoint_every": checkpoint_every})
            artifact = read_back(store, key, deployment)
    check_base(artifact, model)
    return checkpoint_output(artifact, t.seconds, reused)


def run_job(deployment: str, parameters: dict[str, Any]) -> None:
    """One flow run of the deployment, waited for; a job that does not complete fails this stage in one line."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    log = get_run_logger()
    try:
        run = run_deployment(name=deployment, parameters=parameters, timeout=None, poll_interval=POLL_INTERVAL_S)
    except ObjectNotFound:
        raise CKUError(f"deployment {deployment!r} not found on the Prefect server; deploy it (`prefect --no-prompt "
                       "deploy --name cku-unlearn`, see prefect.yaml) or unset options.unlearn_deployment") from None
    log.info("unlearning job %s (%s) on work pool %s ended %s", run.name, run.id, run.work_pool_name,
             run.state.name if run.state else "?")
    if run.state is None or not run.state.is_completed():
        state = run.state.type.value.lower() if run.state else "without a state"
        raise CKUError(f"unlearning job {run.name} ({run.id}) of deployment {deployment} ended {state}: "
                       f"{(run.state.message if run.state else '') or 'see its logs in the Prefect UI'}")


def read_back(store: ArtifactStore, key: str, deployment: str) -> Artifact:
    """The checkpoint the job published, every file's digest verified against its manifest."""
    artifact = store.get(STAGE, key)
    if artifact is None:
        raise StoreError(f"the {deployment} job completed but no intact {STAGE}/{key} is in the artifact store "
                         f"{store!r}; its worker must use the same CKU_ARTIFACT_ROOT as this flow")
    return artifact


def check_base(artifact: Artifact, model: dict[str, Any]) -> None:
    """The checkpoint was trained from this flow's model (its manifest records the model fingerprint)."""
    recorded = artifact.manifest.provenance.model_digest
    expected = model["info"]["fingerprint"]
    if recorded != expected:
        raise StoreError(f"checkpoint {artifact.key} was trained from model {str(recorded)[:12]}, not {expected[:12]}; "
                         f"delete {artifact.path} and rerun")
