# info-odd-raw
head -c 1000 /dev/zero > o.raw
qemu-img info o.raw | grep -v 'disk size'
