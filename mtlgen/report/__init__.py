"""Patient reports: a terminal summary per patient, HTML pages per patient and a cohort index."""
