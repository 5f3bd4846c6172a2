# convert-json-src
qemu-img convert -O raw "json:{'driver': 'null-co', 'size': 65536, 'read-zeroes': true}" z.raw; echo rc=$?
stat -c %s z.raw
