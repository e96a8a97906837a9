"""Test side channel: when RAYSWEEP_TEST_EXEC_LOG names a folder, every process that trains a bundle appends one
line per member (sweep-independent: the point as JSON, the trainer's module, and the step it resumes after, 0
when it starts afresh) to a file there. Loaded through PYTHONPATH by the Ray
workers the test session starts; the code under test knows nothing of it.

Fault injection: a file ``fault-<dim>-<batch_size>`` in that folder makes the next bundle of that experiment dim
and batch size raise an OSError (a transient fault outside the configuration, like a lost disk) and is removed,
so the fault happens once."""

import json
import os
import sys
import time

_log_dir = os.environ.get("RAYSWEEP_TEST_EXEC_LOG")
_ray_worker = "default_worker" in (sys.argv[0] if sys.argv else "")  # only Ray's worker processes train
if _log_dir and _ray_worker:
    try:
        import raysweep.train as _train
        from raysweep.space import setting as _setting  # the typed Experiment or a flat mapping

        def _logging(module):
            original = module.train_bundle

            def _logged(task, experiment, points, **kwargs):
                with open(os.path.join(_log_dir, f"exec-{os.getpid()}.jsonl"), "a") as fh:
                    for p in points:
                        fh.write(json.dumps({"t": time.time(), "dim": _setting(experiment, "dim"),
                                             "steps": _setting(experiment, "steps"), "trainer": module.__name__,
                                             "resume_step": getattr(kwargs.get("resume"), "step", 0),
                                             **{k: p[k] for k in sorted(p)}}) + "\n")
                fault = os.path.join(_log_dir, f"fault-{_setting(experiment, 'dim')}-{points[0]['batch_size']}")
                try:
                    os.remove(fault)
                except OSError:
                    pass
                else:
                    raise OSError("injected fault: the disk went away")
                return original(task, experiment, points, **kwargs)

            module.train_bundle = _logged

        _logging(_train)
        import raysweep.custom.train as _custom_train  # a model factory's trainer (after: the MLP's is logged anyway)

        _logging(_custom_train)
    except Exception:  # never break a worker
        pass
