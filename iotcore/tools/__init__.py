"""Developer and operator commands that talk to a deployment from outside, through its public
API and broker: simulated devices, the factory/device client, the smoke test."""
