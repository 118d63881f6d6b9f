"""Pure rules and helpers behind the Prefect flows: schedules, retraining, due follow-ups,
registration summaries, thumbnails; ``deployments`` is the one module that imports Prefect."""
