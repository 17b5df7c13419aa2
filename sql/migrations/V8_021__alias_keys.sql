-- sigledger:no-transaction
-- V8_021 entity aliases resolve by alias_key (_text_key of V8_020) instead of lower(alias), and every existing
-- alias is renormalised (trimmed, NFC). Online: no statement holds a lock that blocks writers across a scan;
-- the work is done in batches of 1000 rows, each committed.
--
-- Order, and why:
--  1. the unique index on alias_key, built CONCURRENTLY while every alias_key is still NULL (nothing to
--     conflict with);
--  2. existing aliases get their key and their canonical spelling: a scratch table holds every alias's key and
--     canonical form (one read of entity_aliases), the winner of each key is chosen there - the oldest alias
--     (created_at, then id) that is valid under the rules and names a live entity. Every other alias is MOVED
--     (not dropped) to entity_alias_conflicts with its SQLSTATE and reason: a key held by another alias
--     (23505), a blank or over-long canonical form (22023), an alias of a merged entity (SLM01); then the
--     winners are keyed and renamed, in batches. The migration never fails on such data; it warns with the
--     number of conflicts, and `sigledger entity conflicts` / view alias_conflicts list them;
--  3. the trigger that keys new aliases (entity_aliases_set_key), then step 2 again for the aliases inserted
--     while step 2 ran (the old functions insert them unkeyed). From the trigger on, every new alias is keyed
--     and protected by the unique index at once, so such a leftover can lose its key to an alias inserted
--     after it: it is then reported like any other conflict. (Before the trigger, nothing competes for keys.)
--  4. the old unique index on lower(alias) goes: under it "Istanbul" and "İstanbul" collided (the C library
--     lowers both to "istanbul") and "Straße" did not match "STRASSE". Between this statement and the
--     re-application of the API functions by the same `migrate up` (seconds), a call that inserts an alias
--     fails with 42P10 and changes nothing (the old functions name lower(alias) as their ON CONFLICT
--     arbiter);
--  5. a last pass renames any alias still not in canonical form (none, unless one was written between the
--     passes; same key, so no conflict is possible any more);
--  6. CHECKs that keep it so, added NOT VALID and then validated (a scan under SHARE UPDATE EXCLUSIVE:
--     writes go on).
-- Every entity whose aliases changed gets an outbox event, so the Neo4j projection refreshes it.

CREATE UNIQUE INDEX CONCURRENTLY entity_aliases_alias_key_key ON sigledger.entity_aliases (alias_key);

CREATE TABLE IF NOT EXISTS sigledger._v8_021_alias_work (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    alias_key   text NOT NULL,
    canonical   text NOT NULL,
    valid       boolean NOT NULL
);

-- Keys the aliases whose alias_key is NULL (see steps 2 and 3). Idempotent and resumable: a run that stops
-- halfway (lock timeout, cancel) is simply run again by the runner. Each round: the scratch table gets the
-- unkeyed aliases; the winner of each key is chosen (valid under the rules, naming a live entity, the key not
-- held by a keyed alias, the oldest); every other unkeyed alias is moved to the report first (so that no
-- loser is in the way of its winner under the old unique index on lower(alias)); then the winners get their
-- key and their canonical spelling in one UPDATE (canonical at once, so that a CHECK an earlier migration
-- left NOT VALID on untrimmed aliases does not refuse the update). A winner refused there (a concurrent
-- insert took its key) is a loser of the next round.
CREATE OR REPLACE PROCEDURE sigledger._v8_021_key_aliases()
LANGUAGE plpgsql
AS $$
DECLARE
    v_last uuid;
    v_ids uuid[];
    v_emit boolean := to_regprocedure('sigledger._outbox_emit(text, uuid, text, jsonb)') IS NOT NULL;
    v_entities uuid[];
    r record;
BEGIN
    FOR v_round IN 1 .. 4 LOOP
        -- the scratch table: key and canonical form of every unkeyed alias, in id order, 1000 per commit
        v_last := '00000000-0000-0000-0000-000000000000';
        LOOP
            SELECT array_agg(a.id ORDER BY a.id) INTO v_ids
              FROM (SELECT a.id FROM sigledger.entity_aliases a
                     WHERE a.id > v_last AND a.alias_key IS NULL ORDER BY a.id LIMIT 1000) a;
            EXIT WHEN v_ids IS NULL;
            INSERT INTO sigledger._v8_021_alias_work (id, created_at, alias_key, canonical, valid)
            SELECT a.id, a.created_at, sigledger._text_key(a.alias), sigledger._text_canon(a.alias), false
              FROM sigledger.entity_aliases a WHERE a.id = ANY (v_ids)
            ON CONFLICT (id) DO NOTHING;
            v_last := v_ids[cardinality(v_ids)];
            COMMIT;
        END LOOP;
        -- the winner of each key among the unkeyed aliases (the last round chooses none: what is left is
        -- reported)
        UPDATE sigledger._v8_021_alias_work w SET valid = false WHERE w.valid;
        IF v_round < 4 THEN
            UPDATE sigledger._v8_021_alias_work w SET valid = true
              FROM (SELECT DISTINCT ON (x.alias_key) x.id
                      FROM sigledger._v8_021_alias_work x
                      JOIN sigledger.entity_aliases a ON a.id = x.id AND a.alias_key IS NULL
                      JOIN sigledger.entities e ON e.id = a.canonical_entity_id AND e.merged_into IS NULL
                     WHERE x.canonical <> '' AND length(x.canonical) <= 500 AND octet_length(x.canonical) <= 2000
                       AND octet_length(x.alias_key) <= 2400
                       AND NOT EXISTS (SELECT 1 FROM sigledger.entity_aliases h WHERE h.alias_key = x.alias_key)
                     ORDER BY x.alias_key, x.created_at, x.id) AS win
             WHERE w.id = win.id;
        END IF;
        COMMIT;

        -- the losers move to the report, with their reason, 1000 per commit
        LOOP
            WITH moved AS (
                DELETE FROM sigledger.entity_aliases a
                 WHERE a.id IN (SELECT x.id FROM sigledger.entity_aliases x
                                  JOIN sigledger._v8_021_alias_work w ON w.id = x.id AND NOT w.valid
                                 WHERE x.alias_key IS NULL
                                 LIMIT 1000)
                RETURNING a.id, a.alias, a.canonical_entity_id, a.created_at),
                 reported AS (
                INSERT INTO sigledger.entity_alias_conflicts
                       (alias_id, alias, canonical_entity_id, alias_created_at, canonical_alias, alias_key, sqlstate,
                        reason, holder_alias_id, holder_alias, holder_entity_id)
                SELECT m.id, m.alias, m.canonical_entity_id, m.created_at, w.canonical, w.alias_key,
                       CASE WHEN w.canonical = '' OR length(w.canonical) > 500 OR octet_length(w.canonical) > 2000
                                 OR octet_length(w.alias_key) > 2400 THEN '22023'
                            WHEN e.merged_into IS NOT NULL THEN 'SLM01'
                            WHEN h.id IS NOT NULL THEN '23505'
                            ELSE 'XX000' END,
                       CASE WHEN w.canonical = '' THEN 'blank: nothing but whitespace and format characters'
                            WHEN length(w.canonical) > 500 OR octet_length(w.canonical) > 2000
                                THEN format('longer than 500 characters or 2000 bytes once canonical (%s, %s)',
                                            length(w.canonical), octet_length(w.canonical))
                            WHEN octet_length(w.alias_key) > 2400
                                THEN format('resolution key of %s bytes, the limit is 2400', octet_length(w.alias_key))
                            WHEN e.merged_into IS NOT NULL
                                THEN format('names entity %s, which was merged into %s', e.id, e.merged_into)
                            WHEN h.id IS NOT NULL
                                THEN format('same resolution key as alias %s of entity %s', h.id, h.canonical_entity_id)
                            ELSE 'could not be keyed: a constraint refused its canonical form' END,
                       h.id, h.alias, h.canonical_entity_id
                  FROM moved m
                  JOIN sigledger._v8_021_alias_work w ON w.id = m.id
                  LEFT JOIN sigledger.entities e ON e.id = m.canonical_entity_id
                  -- the holder: the alias keyed already, or this round's winner of the key
                  LEFT JOIN LATERAL (
                      SELECT k.id, k.alias, k.canonical_entity_id FROM sigledger.entity_aliases k
                       WHERE k.alias_key = w.alias_key
                      UNION ALL
                      SELECT k.id, k.alias, k.canonical_entity_id
                        FROM sigledger._v8_021_alias_work ww JOIN sigledger.entity_aliases k ON k.id = ww.id
                       WHERE ww.valid AND ww.alias_key = w.alias_key
                       LIMIT 1) AS h ON true
                RETURNING canonical_entity_id)
            SELECT array_agg(DISTINCT rp.canonical_entity_id) INTO v_entities FROM reported rp;
            EXIT WHEN v_entities IS NULL;
            IF v_emit THEN
                PERFORM sigledger._outbox_emit('entity', e, 'entity.aliases_renormalised', '{}') FROM unnest(v_entities) AS e;
            END IF;
            COMMIT;
        END LOOP;

        -- the winners: key and canonical spelling, in id order, 1000 per commit.
        -- Row locks: a concurrent merge_entities updates alias rows of its sources in no fixed order, so this
        -- batch and a merge can deadlock; the loser of a deadlock is this batch (retried, at most 5 times)
        -- or the merge (40P01, which the API documents as retryable). A lock held longer than the runner's
        -- lock_timeout fails the CALL with 55P03, and the runner runs it again (it is idempotent).
        v_last := '00000000-0000-0000-0000-000000000000';
        LOOP
            SELECT array_agg(w.id ORDER BY w.id) INTO v_ids
              FROM (SELECT w.id FROM sigledger._v8_021_alias_work w
                     WHERE w.id > v_last AND w.valid ORDER BY w.id LIMIT 1000) w;
            EXIT WHEN v_ids IS NULL;
            FOR v_try IN 1 .. 5 LOOP
                BEGIN
                    WITH renamed AS (
                        UPDATE sigledger.entity_aliases a SET alias = w.canonical, alias_key = w.alias_key
                          FROM sigledger._v8_021_alias_work w, sigledger.entity_aliases o
                         WHERE w.id = ANY (v_ids) AND a.id = w.id AND o.id = a.id AND a.alias_key IS NULL
                        RETURNING a.canonical_entity_id, o.alias <> w.canonical AS changed)
                    SELECT array_agg(DISTINCT rn.canonical_entity_id) FILTER (WHERE rn.changed) INTO v_entities
                      FROM renamed rn;
                    EXIT;
                EXCEPTION
                    WHEN deadlock_detected THEN
                        IF v_try = 5 THEN
                            RAISE;
                        END IF;
                        PERFORM pg_sleep(0.1 * v_try);
                    WHEN unique_violation OR check_violation OR SQLSTATE 'SLM01' THEN
                        -- a concurrent insert took a key (or a merge tombstoned an entity) meanwhile: one row at a
                        -- time; what fails stays unkeyed and loses in the next round
                        v_entities := '{}';
                        FOR r IN SELECT w.id, w.alias_key, w.canonical, a.alias, a.canonical_entity_id
                                   FROM sigledger._v8_021_alias_work w JOIN sigledger.entity_aliases a ON a.id = w.id
                                  WHERE w.id = ANY (v_ids) AND a.alias_key IS NULL ORDER BY w.id LOOP
                            BEGIN
                                UPDATE sigledger.entity_aliases a SET alias = r.canonical, alias_key = r.alias_key
                                 WHERE a.id = r.id AND a.alias_key IS NULL;
                                IF r.alias <> r.canonical THEN
                                    v_entities := v_entities || r.canonical_entity_id;
                                END IF;
                            EXCEPTION WHEN unique_violation OR check_violation OR SQLSTATE 'SLM01' THEN
                                NULL;
                            END;
                        END LOOP;
                        EXIT;
                END;
            END LOOP;
            IF v_emit AND v_entities IS NOT NULL THEN
                PERFORM sigledger._outbox_emit('entity', e, 'entity.aliases_renormalised', '{}')
                   FROM (SELECT DISTINCT x AS e FROM unnest(v_entities) AS x) AS d;
            END IF;
            v_last := v_ids[cardinality(v_ids)];
            COMMIT;
        END LOOP;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM sigledger._v8_021_alias_work w
                                JOIN sigledger.entity_aliases a ON a.id = w.id WHERE a.alias_key IS NULL);
    END LOOP;
    COMMIT;
END
$$;

CALL sigledger._v8_021_key_aliases();

CREATE TRIGGER entity_aliases_set_key BEFORE INSERT OR UPDATE OF alias ON sigledger.entity_aliases
    FOR EACH ROW EXECUTE FUNCTION sigledger._entity_aliases_set_key();

-- the aliases inserted while the first pass ran (the trigger keys every later one)
CALL sigledger._v8_021_key_aliases();

DROP INDEX CONCURRENTLY IF EXISTS sigledger.entity_aliases_alias_lower_key;

-- Renames every alias to its canonical form, in id order, 1000 per commit (the trigger recomputes the same key).
CREATE OR REPLACE PROCEDURE sigledger._v8_021_canon_aliases()
LANGUAGE plpgsql
AS $$
DECLARE
    v_last uuid := '00000000-0000-0000-0000-000000000000';
    v_ids uuid[];
    v_entities uuid[];
    v_emit boolean := to_regprocedure('sigledger._outbox_emit(text, uuid, text, jsonb)') IS NOT NULL;
BEGIN
    LOOP
        SELECT array_agg(w.id ORDER BY w.id) INTO v_ids
          FROM (SELECT w.id FROM sigledger._v8_021_alias_work w WHERE w.id > v_last ORDER BY w.id LIMIT 1000) w;
        EXIT WHEN v_ids IS NULL;
        WITH renamed AS (
            UPDATE sigledger.entity_aliases a SET alias = w.canonical
              FROM sigledger._v8_021_alias_work w
             WHERE w.id = ANY (v_ids) AND a.id = w.id AND a.alias <> w.canonical
            RETURNING a.canonical_entity_id)
        SELECT array_agg(DISTINCT rn.canonical_entity_id) INTO v_entities FROM renamed rn;
        IF v_emit AND v_entities IS NOT NULL THEN
            PERFORM sigledger._outbox_emit('entity', e, 'entity.aliases_renormalised', '{}') FROM unnest(v_entities) AS e;
        END IF;
        v_last := v_ids[cardinality(v_ids)];
        COMMIT;
    END LOOP;
END
$$;

CALL sigledger._v8_021_canon_aliases();

ALTER TABLE sigledger.entity_aliases
    ADD CONSTRAINT entity_aliases_alias_canonical CHECK (alias = sigledger._text_canon(alias) AND alias <> '') NOT VALID;
ALTER TABLE sigledger.entity_aliases
    ADD CONSTRAINT entity_aliases_alias_key_valid CHECK (alias_key IS NOT NULL AND alias_key = sigledger._text_key(alias))
    NOT VALID;
ALTER TABLE sigledger.entity_aliases VALIDATE CONSTRAINT entity_aliases_alias_canonical;
ALTER TABLE sigledger.entity_aliases VALIDATE CONSTRAINT entity_aliases_alias_key_valid;

-- Every alias is canonical now, hence trimmed and 1 to 500 characters: the older CHECKs hold too. Validate them
-- if a repair of seed-era data left them NOT VALID (same lock as above; no-op when they are valid).
DO $older$
DECLARE
    v_name text;
BEGIN
    FOR v_name IN SELECT c.conname FROM pg_constraint c
                   WHERE c.conrelid = 'sigledger.entity_aliases'::regclass AND NOT c.convalidated
                     AND c.conname IN ('entity_aliases_alias_trimmed', 'entity_aliases_alias_length')
    LOOP
        EXECUTE format('ALTER TABLE sigledger.entity_aliases VALIDATE CONSTRAINT %I', v_name);
    END LOOP;
END
$older$;

DO $report$
DECLARE
    v_count bigint := (SELECT count(*) FROM sigledger.entity_alias_conflicts);
BEGIN
    IF v_count > 0 THEN
        RAISE WARNING USING MESSAGE = format(
            'V8_021: %s alias(es) conflict under the text rules and were moved to entity_alias_conflicts', v_count),
            HINT = 'List them with `sigledger entity conflicts` (view sigledger.alias_conflicts); docs/text-rules.md says how to resolve them.';
    END IF;
END
$report$;

-- the scratch objects of this migration (no client ever used them)
-- squawk-ignore ban-drop-function
DROP PROCEDURE sigledger._v8_021_canon_aliases();
-- squawk-ignore ban-drop-function
DROP PROCEDURE sigledger._v8_021_key_aliases();
-- squawk-ignore ban-drop-table
DROP TABLE sigledger._v8_021_alias_work;
