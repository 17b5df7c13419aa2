DROP TABLE IF EXISTS sigledger.graph_projection;
