# io-raw-odd-write
printf abc > o.raw
qemu-io -f raw -c 'write -P 1 500 12' o.raw | sed 's/(.*)/X/'
stat -c %s o.raw
