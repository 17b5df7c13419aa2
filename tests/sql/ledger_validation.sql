-- pgTAP: the cost ledger. Every validation path by SQLSTATE (through the API and, for the declarative
-- backstop, through direct inserts by the owner), idempotency, the price table, quarantine, cost_trends,
-- append-only, injection strings stored verbatim.
BEGIN;
SET LOCAL client_min_messages = warning;
SELECT plan(69);

INSERT INTO sigledger.agent_registry (id, name) VALUES ('00000000-0000-0000-0000-00000000c001', 'ledger-agent');
\set agent '''00000000-0000-0000-0000-00000000c001'''

-- API signatures are pinned
SELECT has_function('sigledger', 'record_cost',
    ARRAY['text', 'uuid', 'text', 'text', 'bigint', 'bigint', 'numeric', 'timestamp with time zone', 'jsonb']);
SELECT has_function('sigledger', 'record_costs', ARRAY['jsonb']);
SELECT has_function('sigledger', 'cost_trends', ARRAY['integer']);

-- cost_usd: NaN, +/-Infinity, 1e309, negative, above $1M, NULL key
SELECT throws_ok($$SELECT sigledger.record_cost('k-nan', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 'NaN')$$,
    '22023', 'cost_usd must be a finite number, got NaN', 'NaN cost rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-inf', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 'Infinity')$$,
    '22023', 'cost_usd must be a finite number, got Infinity', 'Infinity cost rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-ninf', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, '-Infinity')$$,
    '22023', 'cost_usd must be a finite number, got -Infinity', '-Infinity cost rejected');
SELECT throws_like($$SELECT sigledger.record_cost('k-big', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, '1e309')$$,
    'cost_usd must be at most 1000000, got %', '1e309 cost rejected with 22003 message');
SELECT throws_ok($$SELECT sigledger.record_cost('k-big2', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, '1e309')$$,
    '22003', NULL, '1e309 is 22003');
SELECT throws_ok($$SELECT sigledger.record_cost('k-neg', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, -0.01)$$,
    '22023', 'cost_usd must not be negative, got -0.01', 'negative cost rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-1m', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 1000000.01)$$,
    '22003', 'cost_usd must be at most 1000000, got 1000000.01', 'more than $1M rejected');
SELECT lives_ok($$SELECT sigledger.record_cost('k-1m-ok', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 1000000)$$,
    'exactly $1M accepted');
-- tokens
SELECT throws_ok($$SELECT sigledger.record_cost('k-tok', '00000000-0000-0000-0000-00000000c001', 'm', 'p', -1, 1, 0.1)$$,
    '22023', 'input_tokens must not be negative, got -1', 'negative input tokens rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-tok2', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, -5, 0.1)$$,
    '22023', 'output_tokens must not be negative, got -5', 'negative output tokens rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-tok3', '00000000-0000-0000-0000-00000000c001', 'm', 'p', NULL, 1, 0.1)$$,
    '22004', 'input_tokens must not be NULL', 'NULL tokens rejected');
-- required strings
SELECT throws_ok($$SELECT sigledger.record_cost('', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1)$$,
    '22023', 'idempotency_key must not be empty, got ''''', 'empty key rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-s1', '00000000-0000-0000-0000-00000000c001', '   ', 'p', 1, 1, 0.1)$$,
    '22023', NULL, 'blank model rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-s2', '00000000-0000-0000-0000-00000000c001', 'm', '', 1, 1, 0.1)$$,
    '22023', NULL, 'empty provider rejected');
SELECT throws_ok($$SELECT sigledger.record_cost(NULL, '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1)$$,
    '22004', 'idempotency_key must not be NULL', 'NULL key rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-s3', '00000000-0000-0000-0000-00000000c001', repeat('m', 201), 'p', 1, 1, 0.1)$$,
    '22023', 'model must be at most 200 characters, got 201', 'overlong model rejected');
-- timestamps
SELECT throws_like($$SELECT sigledger.record_cost('k-t1', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1, now() + interval '2 days')$$,
    'created_at must lie after 2020-01-01 and at most 1 day ahead, got %', 'future timestamp rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-t2', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1, '1999-12-31')$$,
    '22023', NULL, 'timestamp before the epoch rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-t3', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1, 'infinity')$$,
    '22023', NULL, 'infinity timestamp rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-t4', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1, '-infinity')$$,
    '22023', NULL, '-infinity timestamp rejected');
-- agent, metadata
SELECT throws_ok($$SELECT sigledger.record_cost('k-a', '00000000-0000-0000-0000-00000000dead', 'm', 'p', 1, 1, 0.1)$$,
    'P0002', 'unknown agent 00000000-0000-0000-0000-00000000dead', 'unknown agent rejected');
SELECT throws_ok($$SELECT sigledger.record_cost('k-md', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.1, NULL, '[1]')$$,
    '22023', 'metadata must be a JSON object, got array', 'non-object metadata rejected');
SELECT is((SELECT count(*) FROM sigledger.llm_cost_log WHERE idempotency_key LIKE 'k-%' AND idempotency_key <> 'k-1m-ok'),
    0::bigint, 'no rejected call wrote a row');

-- idempotency: the same key returns the same id and changes nothing
SELECT sigledger.record_cost('idem-1', :agent, 'm', 'p', 10, 20, 0.25) AS first_id \gset
SELECT is(sigledger.record_cost('idem-1', :agent, 'm', 'p', 10, 20, 0.25), :first_id::bigint, 'same key -> same id');
-- a replay is compared with what the ledger holds: the same key with another cost is a conflict naming both
SELECT throws_ok(format($$SELECT sigledger.record_cost('idem-1', %L, 'other', 'p', 1, 1, 9)$$, :agent), '23505',
    format('idempotency key %L already records 0.25 USD for agent %s (ledger %s), not 9 USD for agent %s',
           'idem-1', :agent, :first_id, :agent), 'same key, another cost -> 23505 naming both');
SELECT is((SELECT cost_usd FROM sigledger.llm_cost_log WHERE idempotency_key = 'idem-1'), 0.25::numeric(14,6),
    'the original row is unchanged');

-- price table: cost computed when omitted; disagreement kept and listed
SELECT lives_ok($$SELECT sigledger.add_model_price('openai', 'gpt-x', 2, 8, now() - interval '1 hour')$$, 'price added');
SELECT isnt(sigledger.record_cost('priced-1', :agent, 'gpt-x', 'openai', 1000000, 500000), NULL, 'cost omitted -> priced');
SELECT results_eq($$SELECT cost_usd, cost_source FROM sigledger.llm_cost_log WHERE idempotency_key = 'priced-1'$$,
    $$VALUES (6.000000::numeric(14,6), 'price_table'::text)$$, '1M in x $2 + 0.5M out x $8 = $6 from the price table');
SELECT throws_like($$SELECT sigledger.record_cost('priced-2', '00000000-0000-0000-0000-00000000c001', 'unknown-model', 'openai', 10, 10)$$,
    'cost_usd omitted and no price for provider % model %', 'cost omitted without a price -> 22023');
SELECT sigledger.record_cost('priced-3', :agent, 'gpt-x', 'openai', 1000000, 0, 5.00);
SELECT results_eq($$SELECT cost_usd, priced_usd FROM sigledger.cost_price_disagreement WHERE idempotency_key = 'priced-3'$$,
    $$VALUES (5.000000::numeric(14,6), 2.000000::numeric(14,6))$$, 'client cost charged, priced cost kept, disagreement listed');
SELECT throws_ok($$SELECT sigledger.add_model_price('openai', 'gpt-y', 'NaN', 1)$$, '22023', NULL, 'NaN price rejected');

-- record_costs: valid rows in, duplicates counted, invalid rows quarantined with SQLSTATE and reason
SELECT results_eq(
    format($$SELECT * FROM sigledger.record_costs(%L::jsonb)$$, jsonb_build_array(
        jsonb_build_object('idempotency_key', 'b-1', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', 0.1),
        jsonb_build_object('idempotency_key', 'b-2', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', 'NaN'),
        jsonb_build_object('idempotency_key', 'b-3', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', 'Infinity'),
        jsonb_build_object('idempotency_key', 'b-4', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', '1e309'),
        jsonb_build_object('idempotency_key', 'b-5', 'agent_id', 'not-a-uuid', 'model', 'm', 'provider', 'p', 'cost_usd', 1),
        jsonb_build_object('idempotency_key', 'b-6', 'agent_id', :agent, 'model', '', 'provider', 'p', 'cost_usd', 1),
        jsonb_build_object('idempotency_key', 'b-7', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', 'abc'),
        jsonb_build_object('idempotency_key', 'idem-1', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'cost_usd', 0.25),
        jsonb_build_object('idempotency_key', 'b-8', 'agent_id', :agent, 'model', 'm', 'provider', 'p', 'input_tokens', -3, 'cost_usd', 1),
        '42'::jsonb)),
    $$VALUES (1, 1, 8)$$, 'batch: 1 inserted, 1 duplicate, 8 quarantined');
SELECT results_eq($$SELECT idempotency_key, sqlstate FROM sigledger.cost_quarantine ORDER BY idempotency_key NULLS LAST$$,
    $$VALUES ('b-2'::text, '22023'::text), ('b-3', '22023'), ('b-4', '22003'), ('b-5', '22P02'), ('b-6', '22023'),
             ('b-7', '22P02'), ('b-8', '22023'), (NULL, '22023')$$, 'each quarantined row keeps its SQLSTATE');
SELECT ok((SELECT bool_and(length(reason) > 0 AND payload IS NOT NULL) FROM sigledger.cost_quarantine),
    'each quarantined row keeps its reason and payload');
SELECT throws_ok($$SELECT * FROM sigledger.record_costs('{"a": 1}')$$, '22023', 'batch must be a JSON array, got object',
    'a batch that is not an array is refused whole');

-- backdated costs: a cost is charged to the period of its created_at, so created_at may be at most 7 days old
-- (the spool-replay window); older: 22023 from record_cost, quarantined by record_costs (nothing lost)
SELECT sigledger.create_agent('ledger-monthly', 10, 'monthly') AS mo \gset
SELECT throws_ok(format($$SELECT sigledger.record_cost('bd-1', %L, 'm', 'p', 1, 1, 5, now() - interval '40 days')$$, :'mo'),
    '22023', NULL, 'record_cost: created_at 40 days old -> 22023');
SELECT throws_like(format($$SELECT sigledger.record_cost('bd-1', %L, 'm', 'p', 1, 1, 5, now() - interval '8 days')$$, :'mo'),
    'created_at must be at most 7 days old (the spool-replay window), got %', 'record_cost: the message names the window and the value');
SELECT ok(NOT EXISTS (SELECT 1 FROM sigledger.llm_cost_log WHERE idempotency_key = 'bd-1')
          AND (SELECT spent_usd FROM sigledger.budget_status(:'mo')) = 0, 'record_cost: refused backdated cost changed nothing');
SELECT results_eq(
    format($$SELECT * FROM sigledger.record_costs(%L::jsonb)$$, jsonb_build_array(
        jsonb_build_object('idempotency_key', 'bd-2', 'agent_id', :'mo', 'model', 'm', 'provider', 'p', 'cost_usd', 5,
                           'created_at', now() - interval '40 days'),
        jsonb_build_object('idempotency_key', 'bd-3', 'agent_id', :'mo', 'model', 'm', 'provider', 'p', 'cost_usd', 3,
                           'created_at', now()))),
    $$VALUES (1, 0, 1)$$, 'record_costs: the backdated row is quarantined, the current one inserted');
SELECT results_eq($$SELECT sqlstate, reason LIKE 'created_at must be at most 7 days old (the spool-replay window), got %'
                      FROM sigledger.cost_quarantine WHERE idempotency_key = 'bd-2'$$,
    $$VALUES ('22023'::text, true)$$, 'record_costs: quarantined with SQLSTATE 22023 and the reason');
SELECT is((SELECT spent_usd FROM sigledger.budget_status(:'mo')), 3::numeric, 'record_costs: only the current row charged');
SELECT lives_ok(format($$SELECT sigledger.record_cost('bd-4', %L, 'm', 'p', 1, 1, 0.5, now() - interval '6 days')$$, :'mo'),
    'record_cost: 6 days old (inside the window) accepted');

-- cost_trends: 1..365, the message names the value; integers only
SELECT throws_ok($$SELECT * FROM sigledger.cost_trends(0)$$, '22023', 'days must be between 1 and 365, got 0', 'days 0');
SELECT throws_ok($$SELECT * FROM sigledger.cost_trends(366)$$, '22023', 'days must be between 1 and 365, got 366', 'days 366');
SELECT throws_ok($$SELECT * FROM sigledger.cost_trends(-7)$$, '22023', 'days must be between 1 and 365, got -7', 'days -7');
SELECT throws_ok($$SELECT * FROM sigledger.cost_trends(NULL)$$, '22023', 'days must be between 1 and 365, got NULL', 'days NULL');
SELECT throws_ok($$SELECT * FROM sigledger.cost_trends('7; DROP TABLE sigledger.llm_cost_log'::text::integer)$$,
    '22P02', NULL, 'an injection string never reaches the function');
SELECT is((SELECT count(*) FROM sigledger.cost_trends(7)), 7::bigint, 'seven days, zero days included');
SELECT is((SELECT total_usd FROM sigledger.cost_trends(1)),
    (SELECT sum(cost_usd) FROM sigledger.llm_cost_log WHERE created_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
    'today''s total equals the ledger');

-- injection strings in every text argument are stored verbatim, never executed
SELECT lives_ok($$SELECT sigledger.record_cost($k$'); DROP TABLE sigledger.llm_cost_log; --$k$, '00000000-0000-0000-0000-00000000c001', $m$gpt' OR '1'='1$m$, $p$p"; DELETE FROM sigledger.budget; --$p$, 1, 1, 0.5, NULL,
    '{"note": "x\"); DROP SCHEMA sigledger CASCADE; --"}')$$, 'injection strings accepted as data');
SELECT results_eq($$SELECT model, provider FROM sigledger.llm_cost_log WHERE idempotency_key = $k$'); DROP TABLE sigledger.llm_cost_log; --$k$ $$,
    $$VALUES ($m$gpt' OR '1'='1$m$::text, $p$p"; DELETE FROM sigledger.budget; --$p$::text)$$, 'stored verbatim');
SELECT has_table('sigledger', 'llm_cost_log', 'the ledger is still there');

-- append-only, for the owner too (trigger) and for the app role (no privilege)
SELECT throws_ok($$UPDATE sigledger.llm_cost_log SET cost_usd = 0$$, '42501', 'llm_cost_log is append-only: UPDATE refused',
    'UPDATE refused by the trigger');
SELECT throws_ok($$DELETE FROM sigledger.llm_cost_log$$, '42501', 'llm_cost_log is append-only: DELETE refused',
    'DELETE refused by the trigger');
SELECT throws_ok($$TRUNCATE sigledger.llm_cost_log CASCADE$$, '42501', 'llm_cost_log is append-only: TRUNCATE refused',
    'TRUNCATE refused by the trigger');
-- the declarative backstop: a direct insert by the owner cannot store a bad row either
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
    VALUES ('d-1', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 'NaN')$$, '23514', NULL, 'NaN refused by llm_cost_log_cost_usd_range');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
    VALUES ('d-2', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 'Infinity')$$, '23514', NULL, 'Infinity refused by llm_cost_log_cost_usd_range');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
    VALUES ('d-3', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 0.00000000001)$$, '23514', NULL,
    'an amount finer than 1e-10 refused by llm_cost_log_cost_usd_range (the column itself no longer rounds)');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd, created_at)
    VALUES ('d-3', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, now() + interval '3 days')$$, '23514', NULL,
    'future created_at refused by llm_cost_log_created_at_range');
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, tokens_input, cost_usd)
    VALUES ('d-4', '00000000-0000-0000-0000-00000000c001', 'm', 'p', -1, 1)$$, '23514', NULL, 'negative tokens refused');

SET LOCAL ROLE sigledger_app;
SELECT throws_ok($$INSERT INTO sigledger.llm_cost_log (idempotency_key, agent_id, model, provider, cost_usd)
    VALUES ('app-1', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1)$$, '42501', NULL, 'app role cannot insert into the ledger');
SELECT throws_ok($$UPDATE sigledger.llm_cost_log SET cost_usd = 0$$, '42501', NULL, 'app role cannot update the ledger');
SELECT throws_ok($$DELETE FROM sigledger.llm_cost_log$$, '42501', NULL, 'app role cannot delete from the ledger');
SELECT throws_ok($$SELECT * FROM sigledger.llm_cost_log$$, '42501', NULL, 'app role cannot read the private table');
SELECT lives_ok($$SELECT sigledger.record_cost('app-ok', '00000000-0000-0000-0000-00000000c001', 'm', 'p', 1, 1, 0.01)$$,
    'app role records through the API');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
