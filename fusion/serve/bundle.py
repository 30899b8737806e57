"""The Serve deployment of a bundle (``fusion.replica.bundle``): one per ``bundle:`` name.

Serve's ``@serve.batch`` keeps ONE queue per decorated function, shared by every instance in
the process, and runs a batch on the instance of its first request: two members built from
``ServedModel`` would share a queue, and a batch mixing both would run on one model.
``_own_queue`` gives each member a subclass with a freshly decorated ``_run_batch``, so every
member has its own queue, and a bad item of one model can never reach another's batch.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from fusion.config import ModelConfig
from fusion.registry import deployment_path, import_object
from fusion.replica.bundle import ModelBundle
from fusion.replica.model import Replica
from fusion.serve.served import ServedModel


def served_class(config: ModelConfig) -> type[Replica]:
    """The plain class behind the Serve deployment the model would get alone (the shared
    ``ServedModel``, or a family's own declared class)."""
    deployment = import_object(deployment_path(config))
    return getattr(deployment, "func_or_class", deployment)


def _own_queue(cls: type[Replica], model: str) -> type[Replica]:
    """A subclass of ``cls`` whose ``_run_batch`` has a batch queue of its own."""
    batched = serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)(
        ServedModel._run_batch.__wrapped__)
    return type(f"{cls.__name__}[{model}]", (cls,), {"_run_batch": batched})


@serve.deployment
class BundleDeployment(ModelBundle):
    """Serve deployment of a bundle: one per ``bundle:`` name in the config."""

    def __init__(self, configs: list[dict[str, Any]], model_dir: str | None = None,
                 observability: dict[str, Any] | None = None,
                 classes: dict[str, type[Replica]] | None = None) -> None:
        super().__init__(configs, model_dir, observability, classes,
                         member_class=served_class, own_queue=_own_queue)
