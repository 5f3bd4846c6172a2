# io-raw-odd-map
head -c 1000 /dev/urandom > o.raw
qemu-img map --output=json o.raw
