"""MQTT: the consumer of an external broker's telemetry (`iotcore ingest`) and the embedded
broker (`iotcore broker`)."""
