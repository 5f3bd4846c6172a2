# json-io
qemu-io -c 'read -P 0 0 512' "json:{'driver': 'null-co', 'read-zeroes': true, 'size': 4096}" | sed 's/(.*)/X/'
