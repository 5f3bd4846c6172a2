# io-raw-odd-read
printf abc > o.raw
qemu-io -f raw -c 'read -v 0 512' o.raw | sed 's/(.*)/X/'
