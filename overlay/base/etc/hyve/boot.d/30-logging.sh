# syslogd and klogd first, so daemons that log to syslog land in /var/log/messages.
start_service 00-syslogd /etc/hyve/services/00-syslogd
start_service 01-klogd /etc/hyve/services/01-klogd
