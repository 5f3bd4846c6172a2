# json-bad
qemu-img info 'json:{"driver": "null-co",}'; echo rc=$?
qemu-img info "json:{'driver' 'x'}"; echo rc=$?
