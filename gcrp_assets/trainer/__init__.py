"""Out-of-process trainer, launched through Dagster Pipes. Imports dagster-pipes, never dagster."""
