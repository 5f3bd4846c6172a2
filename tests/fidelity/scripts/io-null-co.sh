# io-null-co
qemu-io -c 'read -P 0 0 4k' 'json:{"driver": "null-co", "read-zeroes": true}' | sed 's/(.*)/X/'
