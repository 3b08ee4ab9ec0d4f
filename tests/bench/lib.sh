# Helpers the benchmark scripts share (sourced). Everything runs on 127.0.0.1.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# wait_port PORT [SECONDS]: until something listens on PORT (10 s by default).
wait_port() {
  for _ in $(seq $((${2:-10} * 20))); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; exit 1
}
rss_kb() { awk "/^$2:/{print \$2}" "/proc/$1/status"; }
# CPU time (user + system) a process has used, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# CPU time all of a process's threads have run, in nanoseconds (the scheduler's own count: no
# 10 ms ticks to round to).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'; }

# start_nginx DIR PORT: nginx, one worker, answering every request on 127.0.0.1:PORT with a
# 23-byte body over HTTP/2 prior knowledge; its files in DIR, its pid added to `pids`.
start_nginx() {
  cat >"$1/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $1/nginx.pid;
error_log $1/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $1; proxy_temp_path $1; fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
  keepalive_requests 1000000;
  http2_max_concurrent_streams 1024;
  server { listen 127.0.0.1:$2 http2; location / { return 200 "hello from the backend\n"; } }
}
NGINX
  nginx -c "$1/nginx.conf" -p "$1" & pids+=($!)
  wait_port "$2"
}
