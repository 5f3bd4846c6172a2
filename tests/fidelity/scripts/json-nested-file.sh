# json-nested-file
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img info "json:{'driver': 'qcow2', 'file': {'driver': 'file', 'filename': 'a.qcow2'}}" | grep -v 'disk size'
