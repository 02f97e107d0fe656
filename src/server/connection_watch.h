#pragma once
// Tells whether the client of an HTTP request has gone away, so its sequence can be freed at once.
// cpp-httplib 0.11 (Debian 12) does not hand handlers their socket, so the socket is found by its
// port pair among the process's descriptors (Linux /proc/self/fd), once per request, then polled.
namespace uberlm {

class ConnectionWatch {
 public:
  // local_port, remote_port: the request's; a socket that cannot be found is never reported closed.
  ConnectionWatch(int local_port, int remote_port);
  // True once the peer has closed or reset the connection. Never consumes data.
  bool peer_closed() const;

 private:
  int fd_ = -1;
};

}  // namespace uberlm
