-- Raises when the baseline is not in place.
SELECT 'sigledger.entities'::regclass, 'sigledger.entity_aliases'::regclass, 'sigledger.signals'::regclass,
       'sigledger.signal_entities'::regclass, 'sigledger.opportunities'::regclass,
       'sigledger.agent_registry'::regclass, 'sigledger.llm_cost_log'::regclass
 WHERE false;
SELECT rolname FROM (VALUES ('sigledger_owner'), ('sigledger_app'), ('sigledger_readonly')) AS r (rolname)
 WHERE NOT EXISTS (SELECT FROM pg_roles p WHERE p.rolname = r.rolname);
