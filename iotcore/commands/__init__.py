"""Commands to devices: stored, delivered at QoS 1 by whoever holds the MQTT connection,
completed by the device's reply, expired by `maintain` (API.md "Commands")."""
