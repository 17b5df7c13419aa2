package sigledger.neo4j;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.CountDownLatch;
import org.neo4j.configuration.GraphDatabaseSettings;
import org.neo4j.configuration.connectors.BoltConnector;
import org.neo4j.configuration.connectors.HttpConnector;
import org.neo4j.configuration.helpers.SocketAddress;
import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;

/**
 * Runs a real, embedded Neo4j (community) with Bolt on a loopback port until the process is stopped.
 *
 * <p>Usage: {@code Launcher --dir DIR --port PORT [--password PW]}. With a password, authentication is on
 * and the user {@code neo4j} gets that password (no change required); without one, authentication is off.
 * Prints {@code READY bolt://127.0.0.1:PORT} on stdout once Bolt accepts connections. SIGTERM/SIGINT run the
 * JVM shutdown hook, which shuts the database down cleanly (checkpoint, store closed).
 */
public final class Launcher {
  private Launcher() {}

  /** The system database holds users; a fixed password means clients never see a forced change. */
  private static void setPassword(DatabaseManagementService dbms, String password) {
    String escaped = password.replace("\\", "\\\\").replace("'", "\\'");
    try {
      dbms.database("system")
          .executeTransactionally(
              "ALTER USER neo4j SET PASSWORD '" + escaped + "' CHANGE NOT REQUIRED");
    } catch (RuntimeException e) {
      // A restart on an existing store: the password is already the one we want.
      if (!String.valueOf(rootMessage(e)).contains("cannot be the same")) {
        throw e;
      }
    }
  }

  private static String rootMessage(Throwable e) {
    Throwable t = e;
    StringBuilder all = new StringBuilder();
    while (t != null) {
      all.append(t.getMessage()).append('\n');
      t = t.getCause();
    }
    return all.toString();
  }

  public static void main(String[] args) throws Exception {
    Path dir = null;
    int port = 7687;
    String password = null;
    for (int i = 0; i < args.length; i++) {
      switch (args[i]) {
        case "--dir" -> dir = Path.of(args[++i]);
        case "--port" -> port = Integer.parseInt(args[++i]);
        case "--password" -> password = args[++i];
        default -> {
          System.err.println("unknown argument: " + args[i]);
          System.exit(2);
        }
      }
    }
    if (dir == null) {
      System.err.println("--dir is required");
      System.exit(2);
    }
    Files.createDirectories(dir);

    DatabaseManagementService dbms =
        new DatabaseManagementServiceBuilder(dir)
            .setConfig(BoltConnector.enabled, true)
            // Loopback only: this server is for tests and demos on this machine.
            .setConfig(BoltConnector.listen_address, new SocketAddress("127.0.0.1", port))
            .setConfig(BoltConnector.advertised_address, new SocketAddress("127.0.0.1", port))
            .setConfig(HttpConnector.enabled, false)
            .setConfig(GraphDatabaseSettings.auth_enabled, password != null)
            // Small footprint: the machine is shared.
            .setConfig(GraphDatabaseSettings.pagecache_memory, 64L * 1024 * 1024)
            .setConfig(GraphDatabaseSettings.tx_state_max_off_heap_memory, 64L * 1024 * 1024)
            .setConfig(GraphDatabaseSettings.shutdown_transaction_end_timeout, Duration.ofSeconds(5))
            .build();

    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  System.out.println("STOPPING");
                  System.out.flush();
                  dbms.shutdown();
                  System.out.println("STOPPED");
                  System.out.flush();
                  stopped.countDown();
                },
                "neo4j-shutdown"));

    try {
      if (password != null) {
        setPassword(dbms, password);
      }
      // Fail fast if the default database did not come up.
      dbms.database("neo4j").executeTransactionally("RETURN 1");
    } catch (RuntimeException e) {
      e.printStackTrace();
      System.exit(1); // runs the shutdown hook
    }
    System.out.println("READY bolt://127.0.0.1:" + port);
    System.out.flush();
    stopped.await();
  }
}
