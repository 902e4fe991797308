# The host name: from the data disk's user data (`hostname`), else the profile's.
if [ -s "$HYVE_DATA/hostname" ]; then
	hostname -F "$HYVE_DATA/hostname"
else
	hostname -F /etc/hostname
fi
grep -qw "$(hostname)" /etc/hosts 2>/dev/null || echo "127.0.1.1	$(hostname)" >>/etc/hosts
