# The steps of the kernel matrix, the same in a qemu guest (run by /init) and on the host
# (run by `cargo xtask kernels`): `ferroscope check`, then a record of a C program built
# without frame pointers, then one of a Python program, then the kernel probes' records (or
# their refusal). Everything goes to files in $OUT;
# the host judges them. Variables: OUT FERROSCOPE C_PROGRAM PYTHON PY_SCRIPT RECORD_SECONDS RATE
# KPROBE_PROGRAM KPROBE_ROUNDS.
mkdir -p "$OUT"
stamp() { echo "$1 $(cut -d' ' -f1 /proc/uptime)" >> "$OUT/times"; }
# wait_for FILE TEXT TENTHS: until FILE holds TEXT, for at most TENTHS tenths of a second.
wait_for() {
	tries=0
	until grep -q "$2" "$1" 2> /dev/null || [ $tries -ge "$3" ]; do
		tries=$((tries + 1))
		sleep 0.1
	done
}
stamp start
uname -r > "$OUT/release"

echo "matrix: ferroscope check"
"$FERROSCOPE" check > "$OUT/check.out" 2> "$OUT/check.err"
echo $? > "$OUT/check.rc"
stamp check

# record NAME PID: writes NAME.pb.gz, NAME.out (stdout and stderr) and NAME.rc.
record() {
	echo "matrix: ferroscope record of $1 (PID $2) for ${RECORD_SECONDS}s at ${RATE} Hz"
	"$FERROSCOPE" record --pid "$2" -d "${RECORD_SECONDS}s" -r "$RATE" \
		-o "$OUT/$1.pb.gz" --top 0 > "$OUT/$1.out" 2>&1
	echo $? > "$OUT/$1.rc"
}

"$C_PROGRAM" &
c=$!
sleep 0.3
record c "$c"
kill "$c"
wait "$c" 2> /dev/null
stamp c

# -S -E: no site-packages and no environment, so the few stdlib files in the initramfs do.
"$PYTHON" -S -E -B "$PY_SCRIPT" > "$OUT/py.stdout" 2>&1 &
py=$!
wait_for "$OUT/py.stdout" ready 600
# Let its loop run a moment, so that every library it loads is mapped.
sleep 0.3
record py "$py"
kill "$py"
wait "$py" 2> /dev/null
stamp py

# Kernel probes: where the kernel has kprobes, one record of the getppid program with a kprobe
# and a kretprobe on __x64_sys_getppid (the program prints its true call counts; the entry's
# hits have the function as their leaf, the return's its caller); where it has none (the
# host), the clear refusal of such a link. Writes kprobe.stdout (the program's), kprobe.out,
# kprobe.rc and kprobe.kprobe.pb.gz; or refused.out and refused.rc.
if [ -e /sys/bus/event_source/devices/kprobe ]; then
	echo yes > "$OUT/kprobes"
	echo "matrix: ferroscope record --probe kprobe:__x64_sys_getppid --probe kretprobe:..."
	"$KPROBE_PROGRAM" "$KPROBE_ROUNDS" > "$OUT/kprobe.stdout" 2>&1 &
	k=$!
	wait_for "$OUT/kprobe.stdout" ready 300
	"$FERROSCOPE" record --pid "$k" -d 300s -r "$RATE" --probe-rate-limit 0 \
		--probe kprobe:__x64_sys_getppid --probe kretprobe:__x64_sys_getppid \
		-o "$OUT/kprobe.pb.gz" --top 0 > "$OUT/kprobe.out" 2>&1 &
	r=$!
	# Once sampling runs (its first progress line) the probes are attached: start the calls.
	wait_for "$OUT/kprobe.out" " samples " 1200
	kill -USR1 "$k"
	wait "$k"
	# record stops by itself once the program has exited.
	wait "$r"
	echo $? > "$OUT/kprobe.rc"
else
	echo no > "$OUT/kprobes"
	echo "matrix: ferroscope record --probe kprobe:__x64_sys_getppid (no kprobes: refused)"
	"$FERROSCOPE" record -d 1s --probe kprobe:__x64_sys_getppid -o "$OUT/refused.pb.gz" \
		> "$OUT/refused.out" 2>&1
	echo $? > "$OUT/refused.rc"
fi
stamp kprobes
