-- pgTAP: the creation of a budget period's rows (_spend_ensure, 101). A new period takes the cap and slice count
-- of the budget row as it is when the rows are created (read under FOR SHARE), not the figures the caller read
-- at its start, which a settings change may have replaced since (isolation specs
-- budget_period_create_vs_set_budget and budget_period_create_lock_order: the interleavings). A period that
-- exists is never re-capped by it.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(11);

SELECT sigledger.create_agent('tap-period-create', 100, 'daily', 0.1) AS a \gset
SELECT id AS b FROM sigledger.budget WHERE agent_id = :'a' \gset

-- (past periods: the settings changes below re-cap only current and future ones)
SELECT is(sigledger._spend_ensure(:b, '2021-01-01 00:00+00', 5, 1), 1, 'a new period: its row is created');
SELECT is((SELECT cap_usd FROM sigledger.budget_spend WHERE budget_id = :b AND period_start = '2021-01-01 00:00+00'),
          110::numeric, 'its cap is the budget''s (limit x (1 + grace)), not the stale one the caller passed');

SELECT sigledger.set_budget_slices(:b, 3) AS x \gset
SELECT is(sigledger._spend_ensure(:b, '2021-01-02 00:00+00', 5, 1), 3,
          'a new period gets the budget''s slice count, not the stale one the caller passed');
SELECT results_eq(format('SELECT slice::integer, cap_usd FROM sigledger.budget_spend WHERE budget_id = %s
                            AND period_start = %L ORDER BY slice', :b, '2021-01-02 00:00+00'),
                  $$VALUES (0, 110::numeric), (1, 0::numeric), (2, 0::numeric)$$,
                  'slice 0 holds the whole cap, the others none (the first rebalance splits it)');

SELECT sigledger.set_budget_slices(:b, 1) AS x \gset
SELECT is(sigledger._spend_ensure(:b, '2021-01-03 00:00+00', 5, 2), 2,
          'a caller''s count above the budget''s (lowered meanwhile): the caller''s slice exists too');

SELECT sigledger.update_budget(:b, 200) AS x \gset
SELECT is(sigledger._spend_ensure(:b, '2021-01-01 00:00+00', 999, 1), 0, 'a period that exists: nothing created');
SELECT is((SELECT cap_usd FROM sigledger.budget_spend WHERE budget_id = :b AND period_start = '2021-01-01 00:00+00'),
          110::numeric, 'and it is not re-capped (a past period keeps its cap)');
SELECT is(sigledger._spend_ensure(:b, '2021-01-01 00:00+00', 999, 4), 3,
          'a raised count adds the missing slices of a period that exists');
SELECT is((SELECT sum(cap_usd) FROM sigledger.budget_spend WHERE budget_id = :b AND period_start = '2021-01-01 00:00+00'),
          110::numeric, 'with no cap: the period keeps its total');
SELECT is(sigledger._spend_ensure(:b, '2021-01-04 00:00+00', 5, 1), 1, 'after update_budget');
SELECT is((SELECT cap_usd FROM sigledger.budget_spend WHERE budget_id = :b AND period_start = '2021-01-04 00:00+00'),
          220::numeric, 'a period created after a change takes the new cap');

SELECT * FROM finish();
ROLLBACK;
