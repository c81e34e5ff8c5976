"""What both applications share around a run: devices and run folders, MLflow tracking, config
checks, Hydra resolvers, and quieting known third-party warnings."""
