# info-json
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img info --output=json a.qcow2 | grep -v actual-size
