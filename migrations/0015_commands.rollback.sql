DROP FUNCTION IF EXISTS commands_open_devices();
DROP TABLE IF EXISTS commands;
DROP FUNCTION IF EXISTS commands_audit();
DROP FUNCTION IF EXISTS commands_transition();
