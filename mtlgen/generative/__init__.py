"""Generative follow-ups, diffusers-style: the denoising network (``network``), its noise
schedules and samplers (``schedulers``, from diffusers), the training objective (``objective``)
and the sampling pipeline (``pipeline``) are kept apart; ``crops`` picks the lesion-centred
cube they work in. The package knows tensors only: assembling the conditioning from visits and
a deterministic forecast is ``mtlgen.inference.generative``'s work.

The design: the multi-task model's deterministic forecast is kept everywhere, and the generator
draws the residual (true follow-up minus forecast) inside a cube around the forecast lesion,
conditioned on that forecast, the reference visit and the time gap. An uncertain generator thus
stays near the forecast instead of drifting from it, and its samples say where the forecast
may be wrong.
"""
