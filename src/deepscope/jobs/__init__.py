"""Jobs over whole datasets: streamed in shards, kept in a resumable results store, run here or on Ray.

A job runs one of deepscope's analyses over a folder (or list) of photos of any size: ``classify`` (top-k
predictions), ``features`` (a feature bank at any layer), ``explain`` (a catalogue method's maps for every
photo), ``neurons`` (top-k images and positions per channel of a layer) and ``evaluate`` (per-photo
faithfulness metrics with confidence intervals). The photos are cut into shards; each shard is computed by
the library's own function and written to the store as soon as it is done, so memory does not grow with the
dataset, a re-run skips finished shards, and a killed job resumes where it stopped.

Example
-------
>>> from deepscope.jobs import FeaturesJob, run_job, open_store
>>> run = run_job(FeaturesJob(layer="features.18"), loaded, scan_images("val/", loaded.classes), "store/")
>>> bank = open_store("store/").find("features")[0].array("features")

The store's format is documented in :mod:`deepscope.jobs.store` (pyarrow and numpy read it without
deepscope); the engines in :mod:`deepscope.jobs.engines`.
"""

from deepscope.jobs.base import Job, JobRun, run_job
from deepscope.jobs.classify import ClassifyJob, stored_classification
from deepscope.jobs.engines import ENGINES, LocalEngine, RayEngine
from deepscope.jobs.evaluate import EvaluateJob
from deepscope.jobs.explain import ExplainJob
from deepscope.jobs.features import FeaturesJob, stored_feature_bank
from deepscope.jobs.neurons import NeuronsJob, stored_top_activations
from deepscope.jobs.store import Store, StoredJob, open_store

#: every kind of job by name
JOBS = {job.kind: job for job in (ClassifyJob, FeaturesJob, ExplainJob, NeuronsJob, EvaluateJob)}

__all__ = ["JOBS", "ENGINES", "Job", "JobRun", "run_job", "ClassifyJob", "FeaturesJob", "ExplainJob", "NeuronsJob",
           "EvaluateJob", "LocalEngine", "RayEngine", "Store", "StoredJob", "open_store", "stored_classification",
           "stored_feature_bank", "stored_top_activations"]
