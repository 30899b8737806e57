"""How Ray's failures reach a client: the replica's own errors unwrapped, a busy or dead model
as a retryable 503, anything else a model did as a 502 naming it."""

from __future__ import annotations

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError

from fusion.errors import BadInput, Overloaded, StepFailed
from fusion.serve.ingress import model_error


def test_a_replicas_bad_input_comes_out_unwrapped():
    wrapped = RayTaskError("call", "traceback…", BadInput("image is junk", field="image"))
    err = model_error("captioner", "caption", wrapped.as_instanceof_cause())
    assert type(err) is BadInput and err.field == "image" and err.status == 422


def test_backpressure_and_dead_replicas_are_503():
    busy = model_error("diffusion", "generate", BackPressureError(num_queued_requests=9,
                                                                  max_queued_requests=8))
    dead = model_error("diffusion", "generate", RayActorError())
    assert isinstance(busy, Overloaded) and isinstance(dead, Overloaded)
    assert busy.status == dead.status == 503 and "diffusion" in busy.message


def test_a_model_crash_is_502_naming_model_and_task():
    wrapped = RayTaskError("call", "traceback…", RuntimeError("CUDA out of memory"))
    err = model_error("clip", "zero_shot", wrapped.as_instanceof_cause())
    assert isinstance(err, StepFailed) and err.status == 502
    assert "clip/zero_shot" in err.message and "CUDA out of memory" in err.message


def test_a_full_model_queue_retry_after_comes_from_its_drain_rate():
    from fusion.core.admission import Admission

    class Clock:
        now = 50.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    admission = Admission(10, clock=clock)
    for _ in range(5):  # the model answered 5 calls over 2 s
        admission.model_done("diffusion")
        clock.now += 0.5
    busy = model_error("diffusion", "generate", BackPressureError(num_queued_requests=8,
                                                                  max_queued_requests=8),
                       admission)
    assert isinstance(busy, Overloaded) and admission.rejected == 1
    assert abs(busy.retry_after_s - 8 / (5 / 2.5)) < 1e-9
