-- sigledger:no-transaction
-- V8_080: money in the ledger exact to 1e-10 USD (issue 11: numeric(14,6) rounded 0.0000001234 to 0).
-- llm_cost_log.cost_usd and priced_usd become unconstrained numeric, bounded by CHECKs that now also require
-- at most 10 decimal places (the API refuses more with 22003 rather than rounding).
--
-- Online on a big partitioned ledger: numeric(14,6) -> numeric needs no rewrite (no length coercion) and no
-- index uses the columns, but ALTER TYPE would re-check every CHECK constraint on the column with a scan
-- under ACCESS EXCLUSIVE (measured: 0.23 s per million rows). So, in one statement (the DO block below, one
-- transaction, catalog changes only): the two range CHECKs are dropped, the types changed, the CHECKs
-- re-added NOT VALID (new rows are checked at once); then each is VALIDATEd in its own statement under
-- SHARE UPDATE EXCLUSIVE, which lets inserts through. Views that read the two columns (ALTER TYPE refuses to
-- run under them) are dropped and re-created inside the same transaction with their definition, options,
-- owner, comments and privileges (table- and column-level), whichever repeatable file made them; the preflight
-- names views the deployer could not drop or re-create (another owner, no USAGE/CREATE on their schema) and
-- materialized views on the columns, before anything runs. Ends with ANALYZE of the two columns.
DO $$
DECLARE
    v record;
    v_saved jsonb := '[]'::jsonb;
    v_cols smallint[];
    w record;
BEGIN
    SELECT array_agg(attnum) INTO v_cols FROM pg_attribute
     WHERE attrelid = 'sigledger.llm_cost_log'::regclass AND attname IN ('cost_usd', 'priced_usd');
    -- the views on the two columns, and the views on those, deepest last
    FOR v IN
        WITH RECURSIVE deps (oid, depth) AS (
            SELECT DISTINCT r.ev_class, 1
              FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
             WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
               AND d.refobjid = 'sigledger.llm_cost_log'::regclass AND d.refobjsubid = ANY (v_cols)
            UNION
            SELECT r.ev_class, deps.depth + 1
              FROM deps JOIN pg_depend d ON d.refobjid = deps.oid AND d.refclassid = 'pg_class'::regclass
              JOIN pg_rewrite r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
             WHERE r.ev_class <> deps.oid AND deps.depth < 20
        )
        SELECT c.oid, c.relkind, max(deps.depth) AS depth, format('%I.%I', n.nspname, c.relname) AS name,
               pg_get_viewdef(c.oid) AS def, c.reloptions, pg_get_userbyid(c.relowner) AS owner,
               obj_description(c.oid, 'pg_class') AS comment,
               (SELECT jsonb_agg(jsonb_build_array(a.attname, col_description(c.oid, a.attnum)))
                  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
                   AND col_description(c.oid, a.attnum) IS NOT NULL) AS col_comments,
               (SELECT jsonb_agg(jsonb_build_array(x.privilege_type,
                                   CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END,
                                   x.is_grantable))
                  FROM aclexplode(c.relacl) x WHERE x.grantee <> c.relowner) AS grants,
               (SELECT jsonb_agg(jsonb_build_array(x.privilege_type,
                                   CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END,
                                   x.is_grantable, a.attname))
                  FROM pg_attribute a, aclexplode(a.attacl) x
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND a.attacl IS NOT NULL
                   AND x.grantee <> c.relowner) AS col_grants
          FROM deps JOIN pg_class c ON c.oid = deps.oid JOIN pg_namespace n ON n.oid = c.relnamespace
         GROUP BY c.oid, n.nspname
         ORDER BY max(deps.depth) DESC
    LOOP
        IF v.relkind <> 'v' THEN
            RAISE EXCEPTION USING ERRCODE = '55000',
                MESSAGE = format('V8_080: %s (relkind %s) reads llm_cost_log money columns; drop it first', v.name, v.relkind);
        END IF;
        v_saved := jsonb_build_array(to_jsonb(v)) || v_saved;  -- re-created shallowest first
        EXECUTE format('DROP VIEW %s', v.name);
    END LOOP;

    ALTER TABLE sigledger.llm_cost_log
        DROP CONSTRAINT llm_cost_log_cost_usd_range,
        DROP CONSTRAINT llm_cost_log_priced_usd_range;
    -- a partition that held a same-named CHECK of its own (conislocal) keeps it after the parent's drop: drop it
    -- too, or ALTER TYPE would scan that partition to re-check it
    FOR w IN
        SELECT x.conrelid::regclass AS rel, x.conname FROM pg_constraint x JOIN pg_inherits i ON i.inhrelid = x.conrelid
         WHERE i.inhparent = 'sigledger.llm_cost_log'::regclass
           AND x.conname IN ('llm_cost_log_cost_usd_range', 'llm_cost_log_priced_usd_range')
    LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', w.rel, w.conname);
    END LOOP;
    ALTER TABLE sigledger.llm_cost_log
        ALTER COLUMN cost_usd TYPE numeric,
        ALTER COLUMN priced_usd TYPE numeric,
        ADD CONSTRAINT llm_cost_log_cost_usd_range
            CHECK (cost_usd <> 'NaN' AND cost_usd >= 0 AND cost_usd <= 1000000 AND cost_usd = round(cost_usd, 10))
            NOT VALID,
        ADD CONSTRAINT llm_cost_log_priced_usd_range
            CHECK (priced_usd IS NULL OR (priced_usd <> 'NaN' AND priced_usd >= 0 AND priced_usd <= 100000000
                                          AND priced_usd = round(priced_usd, 10)))
            NOT VALID;

    FOR v IN SELECT * FROM jsonb_to_recordset(v_saved) AS x (name text, def text, reloptions text[], owner text,
                                                            comment text, col_comments jsonb, grants jsonb,
                                                            col_grants jsonb)
    LOOP
        EXECUTE format('CREATE VIEW %s%s AS %s', v.name,
                       CASE WHEN v.reloptions IS NULL THEN '' ELSE format(' WITH (%s)', array_to_string(v.reloptions, ', ')) END,
                       v.def);
        IF v.owner <> current_user THEN
            EXECUTE format('ALTER VIEW %s OWNER TO %I', v.name, v.owner);
        END IF;
        IF v.comment IS NOT NULL THEN
            EXECUTE format('COMMENT ON VIEW %s IS %L', v.name, v.comment);
        END IF;
        FOR w IN SELECT e ->> 0 AS col, e ->> 1 AS txt FROM jsonb_array_elements(coalesce(v.col_comments, '[]')) e LOOP
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', v.name, w.col, w.txt);
        END LOOP;
        FOR w IN SELECT e ->> 0 AS priv, e ->> 1 AS grantee, (e ->> 2)::boolean AS grantable
                   FROM jsonb_array_elements(coalesce(v.grants, '[]')) e LOOP
            EXECUTE format('GRANT %s ON %s TO %s%s', w.priv, v.name, w.grantee,
                           CASE WHEN w.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
        -- column-level grants (GRANT SELECT (col) ON view): kept as well
        FOR w IN SELECT e ->> 0 AS priv, e ->> 1 AS grantee, (e ->> 2)::boolean AS grantable, e ->> 3 AS col
                   FROM jsonb_array_elements(coalesce(v.col_grants, '[]')) e LOOP
            EXECUTE format('GRANT %s (%I) ON %s TO %s%s', w.priv, w.col, v.name, w.grantee,
                           CASE WHEN w.grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END;
$$;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_cost_usd_range;
ALTER TABLE sigledger.llm_cost_log VALIDATE CONSTRAINT llm_cost_log_priced_usd_range;
COMMENT ON COLUMN sigledger.llm_cost_log.cost_usd IS 'USD charged, exact to 1e-10 (at most 10 decimal places).';
COMMENT ON COLUMN sigledger.llm_cost_log.priced_usd IS
    'Cost computed from model_price at created_at, rounded to 10 decimal places (NULL: no price); see view cost_price_disagreement.';
-- ALTER COLUMN TYPE dropped the two columns' statistics: the planner's estimates for spend reports come back
-- now rather than at the next autovacuum (a sample, under SHARE UPDATE EXCLUSIVE: inserts go through)
ANALYZE sigledger.llm_cost_log (cost_usd, priced_usd);
