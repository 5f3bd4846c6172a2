# img-trace-opt
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img -T nothing info a.qcow2 | grep 'file format'
