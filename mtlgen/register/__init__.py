"""The registration stage: discover a source, check every file, resolve each patient's identity
and baseline, put accepted scans on the model grid aligned to the baseline (``mtlgen.preprocess``)
and hand the results to the patient registry (``mtlgen.registry.record``) to record.

Entry points: ``mtlgen.register.run.register_source`` / ``register_patient``.
"""
