-- User administration: removal by the tenant's owner or admins, and the per-request look-up
-- of a user's current role (so a removed or demoted user's access tokens stop at once).

-- Removal deletes the row; the user's refresh tokens go with it (ON DELETE CASCADE).
GRANT DELETE ON users TO iotcore_app;

-- Every request with an access token: is the user still there, and with which role? Before
-- the request's own transaction, so no tenant is set; returns only the tenant and the role.
CREATE FUNCTION auth_user_state(p_user_id uuid)
    RETURNS TABLE (tenant_id uuid, role text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
    SELECT u.tenant_id, u.role FROM users u WHERE u.user_id = p_user_id
$fn$;

REVOKE ALL ON FUNCTION auth_user_state(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_user_state(uuid) TO iotcore_app;
