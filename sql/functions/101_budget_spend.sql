-- 101: the spend rows of a budget period, split over slices (V8_081; docs/budgets.md, Slices).
--
-- A budget period is one budget_spend row per slice (budget.slices, 1 by default). The caps of a period's
-- slices always sum to its total T = sum(cap_usd + coalesce(frozen_usd, 0)), the budget's cap when the period
-- began. Every change is one statement on one slice: a guarded increase (spent + reserved + x <= cap) that
-- fits in its slice, or a decrease, which always fits. When an increase does not fit in its slice, the
-- rebalance locks every slice of the period in slice order and re-splits the room of the whole period,
-- R = T - sum(spent + reserved): the increase is refused (a hold) or becomes excess (a cost already spent)
-- only when R itself is short. So a one-slice budget behaves exactly as before V8_081, and an N-slice budget
-- refuses a caller only when the whole budget has no room.
--
-- Lock order (every path): budget levels org -> team -> agent, then budget id, period, slice ascending.
-- The out-of-order case and how it is avoided: a guarded UPDATE that waited for a slice's row lock and then
-- finds the new version over its guard keeps that lock (READ COMMITTED re-check). Holding slice k > 0 and
-- then locking slices 0..N-1 for a rebalance could deadlock with another rebalancer; so an increase on a
-- slice other than 0 is tried inside a subtransaction whose refusal rolls the lock back. Slice 0 is first in
-- the order, so an attempt on it needs no subtransaction, and one-slice budgets never pay for one.
--
-- Over the cap (R < 0 after a cost): every slice is left without room, and frozen_usd is set (to 0) on each:
-- room that a release or a settlement below its estimate frees on a slice is moved from its cap into
-- frozen_usd rather than becoming headroom that the period as a whole does not have; the next rebalance
-- returns it to the caps. T is unchanged by that move.

-- _budget_spend_bump_version (the trigger function of V4_002, redefined here): the seed's optimistic-lock
-- version counts changes of the money (spend, holds, cap, excess); the bookkeeping of the alert boundary
-- (next_alert_usd) and of frozen room does not change it, so a charge is one version, whatever follows it.
CREATE OR REPLACE FUNCTION sigledger._budget_spend_bump_version() RETURNS trigger
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    IF (NEW.spent_usd, NEW.reserved_usd, NEW.cap_usd, NEW.excess_usd)
       IS DISTINCT FROM (OLD.spent_usd, OLD.reserved_usd, OLD.cap_usd, OLD.excess_usd) THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$;

-- _spend_ensure: creates the rows of a period if they are missing: slice 0 with the whole cap, slices 1..n-1
-- with none (n: the budget's slice count, or p_slices when higher; the first rebalance splits the room). All in
-- one statement, so a period's slices are created together: a concurrent first user waits for this INSERT and
-- then finds them all. Returns the number of rows created (0 when they existed).
--
-- The cap and n are the budget row's when the period is created, read under FOR SHARE; p_cap, what the caller
-- read without a lock, only stands in when the row has no limit. Why: a settings change (_budget_apply_settings,
-- set_budget_slices: 120) locks the budget row FOR NO KEY UPDATE, changes it and re-caps the period rows it can
-- see. A creation from an unlocked read could insert the old cap meanwhile (its rows uncommitted when the change
-- looked, or inserted after the change committed), and the period kept it until the next change (isolation
-- spec budget_period_create_vs_set_budget). FOR SHARE conflicts with FOR NO KEY UPDATE (a charge's foreign-key
-- checks, FOR KEY SHARE, with neither): whichever holds the row first commits first, and the other then reads
-- the new cap, or sees the new rows and re-caps them.
-- Only a creation takes the lock: a period whose slice 0 is visible keeps its cap (the slices a raised count
-- adds get none), so a period that exists, the common case, costs one statement and no lock on the budget row.
-- Lock order: the budget row comes right before its own spend rows (level, budget id, [budget row], period,
-- slice): a settings change locks it, then the rows of the budget's current and future periods, so a caller must
-- not hold a spend row of a budget when it creates a period of it (40P01: isolation spec
-- budget_period_create_lock_order). A call charges one period per budget, except record_costs with costs of
-- several days (_record_costs_charge, its reservation-key branch) and reconcile_budgets: they create a budget's
-- missing periods (or lock its row) before they lock any of its spend rows. (Under REPEATABLE READ, a creation
-- after a change committed since its snapshot gets 40001, as any lock of a row updated meanwhile.)
DROP FUNCTION IF EXISTS sigledger._spend_ensure(bigint, timestamptz, numeric);
CREATE OR REPLACE FUNCTION sigledger._spend_ensure(p_budget_id bigint, p_period_start timestamptz, p_cap numeric,
                                                   p_slices integer DEFAULT 1)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_count integer;
    v_found boolean;
    v_cap numeric;
    v_slices integer;
BEGIN
    -- the period exists (its slice 0 is visible): only the slices a raised count adds, with no cap, in the
    -- statement that looks (one statement, as before, on the path of every short slice and every refusal)
    WITH z AS (
        SELECT EXISTS (SELECT 1 FROM sigledger.budget_spend s
                        WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = 0) AS found
    ), i AS (
        INSERT INTO sigledger.budget_spend (budget_id, period_start, slice, cap_usd)
        SELECT p_budget_id, p_period_start, g, 0
          FROM generate_series(1, p_slices - 1) g
         WHERE (SELECT z.found FROM z)
        ON CONFLICT ON CONSTRAINT budget_spend_pkey DO NOTHING
        RETURNING 1
    )
    SELECT z.found, (SELECT count(*) FROM i) INTO v_found, v_count FROM z;
    IF v_found THEN
        RETURN v_count;
    END IF;
    -- a new period (or one a concurrent first user is creating: the INSERT waits for it and then does nothing):
    -- the cap and the slice count as of now, under the lock (the caller's count too, when higher: its slice
    -- must exist; the rows above the budget's count drain)
    SELECT b.limit_usd * (1 + b.grace_ratio), b.slices INTO v_cap, v_slices
      FROM sigledger.budget b WHERE b.id = p_budget_id
       FOR SHARE;
    INSERT INTO sigledger.budget_spend (budget_id, period_start, slice, cap_usd)
    SELECT p_budget_id, p_period_start, g, CASE WHEN g = 0 THEN coalesce(v_cap, p_cap) ELSE 0 END
      FROM generate_series(0, greatest(v_slices, p_slices, 1) - 1) g
    ON CONFLICT ON CONSTRAINT budget_spend_pkey DO NOTHING;
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END;
$$;

-- _spend_rebalance: locks every slice row of a period in slice order and re-splits its room
-- R = T - sum(spent + reserved) (T: p_total, or the period's own total when NULL).
-- - R >= p_need ('split'): slice p_slice gets p_need plus a share, the rest of R is split evenly over the
--   active slices (< p_slices); slices >= p_slices (left by a lowered slice count, draining their
--   reservations) get no room and freeze what they free.
-- - 0 <= R < p_need and guarded ('split0'): refused; R is re-split evenly (smaller requests fit anywhere).
-- - otherwise ('short'): no slice keeps room except p_slice, which gets whatever R there is (none when R < 0);
--   an unguarded caller's UPDATE then records its shortfall as excess. Every slice freezes what it frees
--   until the next rebalance, so no slice shows room that the period as a whole does not have.
-- A cap never drops below spent + reserved - excess of its slice (the backstop CHECK holds on every row), and
-- the caps sum to T. Returns R (before the caller's change).
CREATE OR REPLACE FUNCTION sigledger._spend_rebalance(
    p_budget_id bigint, p_period_start timestamptz, p_slices integer, p_slice integer, p_need numeric,
    p_guarded boolean, p_total numeric DEFAULT NULL)
RETURNS numeric
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_slice integer[];
    v_cap numeric[];
    v_used numeric[];
    v_excess numeric[];
    v_new numeric[];
    v_frozen numeric[];
    v_total numeric;
    v_room numeric;
    v_share numeric;
    v_left numeric;
    v_add numeric;
    v_active integer := 0;
    n integer;
    k integer;
    j integer;
BEGIN
    SELECT array_agg(x.slice ORDER BY x.slice), array_agg(x.cap_usd ORDER BY x.slice),
           array_agg(x.spent_usd + x.reserved_usd ORDER BY x.slice), array_agg(x.excess_usd ORDER BY x.slice),
           sum(x.cap_usd + coalesce(x.frozen_usd, 0)), sum(x.spent_usd + x.reserved_usd)
      INTO v_slice, v_cap, v_used, v_excess, v_total, v_room
      FROM (SELECT s.slice::integer AS slice, s.cap_usd, s.spent_usd, s.reserved_usd, s.excess_usd, s.frozen_usd
              FROM sigledger.budget_spend s
             WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start
             ORDER BY s.slice
               FOR UPDATE) x;
    n := cardinality(v_slice);
    IF n IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('budget_spend rows of budget %s period %s missing at rebalance', p_budget_id, p_period_start);
    END IF;
    v_total := coalesce(p_total, v_total);
    v_room := v_total - v_room;
    k := coalesce(array_position(v_slice, p_slice), 1);  -- a slice not created yet: slice 0 stands in
    FOR i IN 1 .. n LOOP
        IF v_slice[i] < p_slices THEN
            v_active := v_active + 1;
        END IF;
    END LOOP;
    v_new := v_cap;
    v_frozen := array_fill(NULL::numeric, ARRAY[n]);
    IF v_room >= p_need OR (p_guarded AND v_room >= 0) THEN
        v_share := trunc((v_room - CASE WHEN v_room >= p_need THEN p_need ELSE 0 END) / greatest(v_active, 1), 10);
        FOR i IN 1 .. n LOOP
            IF v_slice[i] < p_slices THEN
                v_new[i] := v_used[i] + v_share;
            ELSE
                v_new[i] := v_used[i];  -- draining: no room, and what it frees is frozen until the next rebalance
                v_frozen[i] := 0;
            END IF;
        END LOOP;
        -- the rest (p_need and the rounding of the shares) goes to slice k: the caps sum to T exactly
        v_new[k] := v_new[k] + (v_total - (SELECT sum(x) FROM unnest(v_new) x));
    ELSE
        -- short: each cap at its floor (spent + reserved - excess), then filled up to its use (slice k first,
        -- then in slice order) with what T leaves; slice k takes what remains beyond that (R when R > 0). When T
        -- is below the floors (a limit lowered under the spend), caps go lower, slice k first, and excess
        -- grows to keep each row's backstop true (as a one-row budget always did).
        v_left := v_total;
        FOR i IN 1 .. n LOOP
            v_new[i] := greatest(0, v_used[i] - v_excess[i]);
            v_left := v_left - v_new[i];
            v_frozen[i] := CASE WHEN n > 1 THEN 0 END;  -- one row needs no freezing: its room is the budget's
        END LOOP;
        FOR i IN 0 .. n - 1 LOOP
            j := CASE WHEN i = 0 THEN k WHEN i < k THEN i ELSE i + 1 END;
            v_add := CASE WHEN v_left >= 0 THEN least(v_left, v_used[j] - v_new[j]) ELSE -least(-v_left, v_new[j]) END;
            v_new[j] := v_new[j] + v_add;
            v_left := v_left - v_add;
        END LOOP;
        v_new[k] := v_new[k] + v_left;
        FOR i IN 1 .. n LOOP
            v_excess[i] := greatest(v_excess[i], v_used[i] - v_new[i]);
        END LOOP;
    END IF;
    IF v_new[k] < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = format('rebalance of budget %s period %s left slice %s a negative cap', p_budget_id,
                             p_period_start, v_slice[k]);
    END IF;
    UPDATE sigledger.budget_spend s
       SET cap_usd = u.cap, frozen_usd = u.frozen, excess_usd = u.excess
      FROM unnest(v_slice, v_new, v_frozen, v_excess) AS u(slice, cap, frozen, excess)
     WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = u.slice
       AND (s.cap_usd, s.frozen_usd, s.excess_usd) IS DISTINCT FROM (u.cap, u.frozen, u.excess);
    RETURN v_room;
END;
$$;

-- _spend_alerts: one alert row per (budget, period, threshold) reached by a spend increase, plus a NOTIFY
-- on channel sigledger_budget_alert carrying {"alert_id": id} for each row actually inserted. p_old_spent < threshold <= p_new_spent.
-- (For a sliced period the caller passes the highest threshold already alerted as the old figure: its total
-- is summed from rows other sessions may be changing, so a crossing is tested as "reached and not yet
-- alerted" rather than "crossed by this change", which two concurrent changes could both miss.)
CREATE OR REPLACE FUNCTION sigledger._spend_alerts(p_budget_id bigint, p_period_start timestamptz, p_limit numeric,
                                                   p_thresholds numeric[], p_old_spent numeric, p_new_spent numeric)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_threshold numeric;
    v_id bigint;
    v_count integer := 0;
BEGIN
    FOREACH v_threshold IN ARRAY p_thresholds LOOP
        IF p_old_spent < v_threshold * p_limit AND p_new_spent >= v_threshold * p_limit THEN
            INSERT INTO sigledger.budget_alert (budget_id, period_start, threshold, limit_usd, spent_usd)
            VALUES (p_budget_id, p_period_start, v_threshold, p_limit, p_new_spent)
            ON CONFLICT ON CONSTRAINT budget_alert_once_key DO NOTHING
            RETURNING id INTO v_id;
            IF v_id IS NOT NULL THEN
                v_count := v_count + 1;
                -- the payload is a wake-up, not the alert: any role may NOTIFY on this channel, so watchers
                -- read the alert through the API by this id (budget_alert_document) and ignore what is not there
                PERFORM pg_notify('sigledger_budget_alert', json_build_object('alert_id', v_id)::text);
            END IF;
        END IF;
    END LOOP;
    RETURN v_count;
END;
$$;

-- _spend_crossed: after a charge on slice 0 of a one-slice budget reached the row's next_alert_usd (or found it
-- not yet known: NULL after set_budget and set_budget_slices): the alerts of the thresholds crossed between
-- p_old_spent and p_new_spent, then the next boundary (the lowest threshold x limit above the new spend;
-- 99999999999 when none is left). The caller holds the row's lock.
-- A period that keeps slices above 0 (a slice count lowered back to 1: they drain, and keep their spend) has the
-- sum of its rows as its spend, not slice 0's: its alerts test that sum ("reached and not yet alerted", as a
-- sliced period's), and its boundary is set to 0, so that every charge on slice 0 comes back here.
CREATE OR REPLACE FUNCTION sigledger._spend_crossed(p_budget_id bigint, p_period_start timestamptz,
                                                    p_old_spent numeric, p_new_spent numeric)
RETURNS integer
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    b record;
    v_count integer := 0;
    v_spent numeric;
    v_alerted numeric;
    v_next numeric;
BEGIN
    SELECT x.limit_usd, x.alert_thresholds INTO b FROM sigledger.budget x WHERE x.id = p_budget_id;
    IF b.limit_usd IS NULL THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM sigledger.budget_spend s
                WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice > 0) THEN
        -- (this session's change included, other sessions' committed ones: see _spend_apply's sliced case)
        SELECT sum(s.spent_usd),
               (SELECT max(a.threshold) FROM sigledger.budget_alert a
                 WHERE a.budget_id = p_budget_id AND a.period_start = p_period_start)
          INTO v_spent, v_alerted
          FROM sigledger.budget_spend s
         WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start;
        IF p_new_spent > p_old_spent THEN
            v_count := sigledger._spend_alerts(p_budget_id, p_period_start, b.limit_usd, b.alert_thresholds,
                                               coalesce(v_alerted, 0) * b.limit_usd, v_spent);
        END IF;
        v_next := 0;
    ELSE
        IF p_new_spent > p_old_spent THEN
            v_count := sigledger._spend_alerts(p_budget_id, p_period_start, b.limit_usd, b.alert_thresholds,
                                               p_old_spent, p_new_spent);
        END IF;
        v_next := coalesce((SELECT min(t * b.limit_usd) FROM unnest(b.alert_thresholds) t
                             WHERE t * b.limit_usd > p_new_spent), 99999999999);
    END IF;
    UPDATE sigledger.budget_spend s SET next_alert_usd = v_next
     WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = 0
       AND s.next_alert_usd IS DISTINCT FROM v_next;
    RETURN v_count;
END;
$$;

-- _spend_apply: changes one budget period at one level by p_spent (spend) and p_reserved (holds; negative
-- releases) on one slice: p_slice (a reservation's own), else slice 0 for a one-slice budget, else a random
-- one. p_guarded: the increase must fit under the cap (else ok = false and nothing changed); unguarded (a
-- cost already spent): always applied, the part beyond the room of the whole period added to excess_usd.
-- p_expected_version (one-slice periods only) must equal the row's version. Returns the slice used, ok, and
-- the period's remaining room, spend and version after the change (summed over slices for a sliced period:
-- other sessions' uncommitted changes are not in those sums). Fires alerts for spend increases.
CREATE OR REPLACE FUNCTION sigledger._spend_apply(
    p_budget_id bigint, p_period_start timestamptz, p_cap numeric, p_slices integer, p_slice integer,
    p_spent numeric, p_reserved numeric, p_guarded boolean, p_limit numeric, p_thresholds numeric[],
    p_expected_version bigint DEFAULT NULL,
    OUT slice integer, OUT ok boolean, OUT remaining_usd numeric, OUT spent_usd numeric, OUT version bigint)
LANGUAGE plpgsql
SET search_path = sigledger, pg_temp
AS $$
DECLARE
    v_inc numeric := p_spent + p_reserved;
    v_freed numeric := greatest(0, -(p_spent + p_reserved));
    v_room numeric;
    v_alerted numeric;
    v_count integer;
    v_crossed boolean := false;
    v_sliced boolean;
BEGIN
    slice := coalesce(p_slice, CASE WHEN p_slices > 1 THEN floor(random() * p_slices)::integer ELSE 0 END);
    -- a slice above 0 under a one-slice budget is a draining one (a lowered slice count): the period is still
    -- several rows, its figures and alerts are their sums
    v_sliced := p_slices > 1 OR slice > 0;
    ok := false;
    FOR attempt IN 1 .. 2 LOOP
        IF v_inc > 0 AND slice > 0 THEN
            -- see the header: a refusal here must not keep slice's lock
            BEGIN
                UPDATE sigledger.budget_spend s
                   SET spent_usd = s.spent_usd + p_spent, reserved_usd = s.reserved_usd + p_reserved
                 WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = _spend_apply.slice
                   AND s.spent_usd + s.reserved_usd + v_inc <= s.cap_usd
                RETURNING s.cap_usd - s.spent_usd - s.reserved_usd, s.spent_usd, s.version
                     INTO remaining_usd, spent_usd, version;
                IF NOT FOUND THEN
                    RAISE EXCEPTION USING ERRCODE = 'SLZ00', MESSAGE = 'slice has no room (internal, never raised to callers)';
                END IF;
                ok := true;
            EXCEPTION WHEN SQLSTATE 'SLZ00' THEN
                ok := false;
            END;
        ELSE
            -- slice 0 or a decrease: one statement. A decrease on a frozen slice (over-cap period) moves the room
            -- it frees from the cap into frozen_usd.
            UPDATE sigledger.budget_spend s
               SET spent_usd = s.spent_usd + p_spent, reserved_usd = s.reserved_usd + p_reserved,
                   cap_usd = s.cap_usd - CASE WHEN s.frozen_usd IS NULL THEN 0 ELSE least(v_freed, s.cap_usd) END,
                   frozen_usd = s.frozen_usd + least(v_freed, s.cap_usd)
             WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = _spend_apply.slice
               AND (v_inc <= 0 OR s.spent_usd + s.reserved_usd + v_inc <= s.cap_usd)
               AND (p_expected_version IS NULL OR s.version = p_expected_version)
            RETURNING s.cap_usd - s.spent_usd - s.reserved_usd, s.spent_usd, s.version,
                      s.next_alert_usd IS NULL OR s.spent_usd >= s.next_alert_usd
                 INTO remaining_usd, spent_usd, version, v_crossed;
            ok := FOUND;
        END IF;
        EXIT WHEN ok;
        -- nothing updated: the period's rows are missing (first use), inserted by a concurrent first user not yet
        -- committed (the INSERT waits for it), or the change does not fit in this slice. Either way the rows
        -- exist afterwards and the attempt is redone once: its answer, not the INSERT's, decides.
        IF attempt = 1 THEN
            v_count := sigledger._spend_ensure(p_budget_id, p_period_start, p_cap, p_slices);
            CONTINUE;
        END IF;
        IF p_expected_version IS NOT NULL THEN
            RETURN;  -- the caller reads the current version and reports the conflict or the refusal
        END IF;
        IF NOT v_sliced THEN
            -- one slice wanted; rows of slices above 0 remain only while a lowered slice count drains
            v_sliced := EXISTS (SELECT 1 FROM sigledger.budget_spend s
                                 WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice > 0);
        END IF;
        IF v_sliced THEN
            v_room := sigledger._spend_rebalance(p_budget_id, p_period_start, p_slices, slice, v_inc, p_guarded);
            IF p_guarded AND v_room < v_inc THEN
                EXIT;  -- the whole period has no room for it
            END IF;
        ELSIF p_guarded THEN
            EXIT;
        END IF;
        -- the rebalance gave this slice the room (or all there was): apply, the shortfall recorded as excess
        UPDATE sigledger.budget_spend s
           SET spent_usd = s.spent_usd + p_spent, reserved_usd = s.reserved_usd + p_reserved,
               excess_usd = s.excess_usd + greatest(0, s.spent_usd + s.reserved_usd + v_inc - s.cap_usd - s.excess_usd)
         WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start AND s.slice = _spend_apply.slice
        RETURNING s.cap_usd - s.spent_usd - s.reserved_usd, s.spent_usd, s.version,
                  s.next_alert_usd IS NULL OR s.spent_usd >= s.next_alert_usd
             INTO remaining_usd, spent_usd, version, v_crossed;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'XX000',
                MESSAGE = format('budget_spend row %s/%s slice %s vanished', p_budget_id, p_period_start, slice);
        END IF;
        ok := true;
        EXIT;
    END LOOP;
    IF v_sliced AND (p_guarded OR (ok AND p_spent > 0 AND cardinality(p_thresholds) > 0)) THEN
        -- the period's figures are the sums over its slices (this session's change included)
        SELECT sum(s.cap_usd + coalesce(s.frozen_usd, 0)) - sum(s.spent_usd + s.reserved_usd), sum(s.spent_usd),
               sum(s.version),
               (SELECT max(a.threshold) FROM sigledger.budget_alert a
                 WHERE a.budget_id = p_budget_id AND a.period_start = p_period_start)
          INTO remaining_usd, spent_usd, version, v_alerted
          FROM sigledger.budget_spend s
         WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start;
    END IF;
    IF ok AND p_spent > 0 AND cardinality(p_thresholds) > 0 THEN
        -- (assignments, not PERFORM: no SQL statement unless a threshold is reached)
        IF v_sliced THEN
            v_count := sigledger._spend_alerts(p_budget_id, p_period_start, p_limit, p_thresholds,
                                               coalesce(v_alerted, 0) * p_limit, spent_usd);
        ELSIF v_crossed THEN
            v_count := sigledger._spend_crossed(p_budget_id, p_period_start, spent_usd - p_spent, spent_usd);
        END IF;
    END IF;
END;
$$;

-- _spend_period_room: the remaining room, spend and version of a budget period summed over its slices
-- (a plain read, no lock).
CREATE OR REPLACE FUNCTION sigledger._spend_period_room(p_budget_id bigint, p_period_start timestamptz,
                                                        OUT remaining_usd numeric, OUT spent_usd numeric,
                                                        OUT version bigint)
LANGUAGE plpgsql STABLE
SET search_path = sigledger, pg_temp
AS $$
BEGIN
    -- (all NULL when the period has no rows yet)
    SELECT CASE WHEN count(*) > 0
                THEN greatest(0, sum(s.cap_usd + coalesce(s.frozen_usd, 0)) - sum(s.spent_usd + s.reserved_usd)) END,
           sum(s.spent_usd), sum(s.version)
      INTO remaining_usd, spent_usd, version
      FROM sigledger.budget_spend s
     WHERE s.budget_id = p_budget_id AND s.period_start = p_period_start;
END;
$$;

-- The helpers of earlier builds, replaced by _spend_apply.
DROP FUNCTION IF EXISTS sigledger._spend_hold(bigint, timestamptz, numeric, numeric, boolean);
DROP FUNCTION IF EXISTS sigledger._spend_charge(bigint, timestamptz, numeric, numeric, numeric, numeric, numeric[]);
DROP FUNCTION IF EXISTS sigledger._spend_release(bigint, timestamptz, numeric);
