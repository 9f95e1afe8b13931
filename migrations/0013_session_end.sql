-- Logout also ends the session's access tokens (runbooks/sessions.md): the API needs the
-- revoked family's id to deny them, so auth_revoke_family returns it too.
DROP FUNCTION auth_revoke_family(bytea);

CREATE FUNCTION auth_revoke_family(p_hash bytea)
    RETURNS TABLE (tenant_id uuid, user_id uuid, family_id uuid)
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp
AS $fn$
DECLARE
    t refresh_tokens%ROWTYPE;
BEGIN
    SELECT * INTO t FROM refresh_tokens r WHERE r.token_hash = p_hash;
    IF FOUND THEN
        UPDATE refresh_tokens r SET revoked_at = now()
            WHERE r.family_id = t.family_id AND r.revoked_at IS NULL;
        RETURN QUERY SELECT t.tenant_id, t.user_id, t.family_id;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION auth_revoke_family(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_revoke_family(bytea) TO iotcore_app;
