# snapshot-info
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-img info --output=json a.qcow2 | grep -v -e actual-size -e date -e vm-clock
