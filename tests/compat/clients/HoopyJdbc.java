import java.sql.*;

/** pgjdbc through hoopy: prepared statements past prepareThreshold, application_name set
 *  after startup (setClientInfo sends SET), the backend pid, a refused write, close. */
public class HoopyJdbc {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], a[1], a[2])) {
      PreparedStatement ps = c.prepareStatement("SELECT id, name, email FROM customers WHERE id = ?");
      for (int i = 0; i < 7; i++) {  // past prepareThreshold (5): a named server-side statement
        ps.setInt(1, 1 + i % 2);
        try (ResultSet rs = ps.executeQuery()) {
          rs.next();
          System.out.println(rs.getInt(1) + "|" + rs.getString(2) + "|" + rs.getString(3));
        }
      }
      c.setClientInfo("ApplicationName", a[3]);
      int pid = ((org.postgresql.PGConnection) c).getBackendPID();
      try (ResultSet rs = c.createStatement().executeQuery("SELECT pg_backend_pid()")) {
        rs.next();
        System.out.println("pid " + (rs.getInt(1) == pid ? "same" : "differs"));
      }
      try (PreparedStatement up = c.prepareStatement("UPDATE customers SET email = ? WHERE id = 1")) {
        up.setString(1, "[REDACTED]");
        up.executeUpdate();
        System.out.println("written?!");
      } catch (SQLException e) {
        System.out.println("refused " + e.getSQLState());
      }
      try (ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM customers")) {
        rs.next();
        System.out.println("count " + rs.getInt(1));
      }
    }
    System.out.println("closed");
  }
}
