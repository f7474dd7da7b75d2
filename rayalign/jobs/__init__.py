"""Job sizing and submission: plan a run's memory and steps, describe jobs, submit them to a cluster."""
