# bench/floor/ping-cycles.awk — where one ping's round trip through a tunnel
# goes, from `perf sched timehist` output: for each ping that wakes from its
# interval sleep and whose whole cycle runs on CPU 0
#     ping (send) -> daemon A (TUN -> UDP) -> daemon B (UDP -> TUN, reply TUN -> UDP)
#                 -> daemon A (UDP -> TUN) -> ping (receive)
# it takes each step's run time and scheduling delay (wake-up to running), and
# prints the medians in µs.  Cycles that touch CPU 1 are skipped: on the
# Firecracker VM this was written on, CPU 1 reports no idle switches, so its
# run times include idle time.
#
#   bench/dataplane with PINGS=300 (one system), and meanwhile:
#   perf sched record -o sched.data -- sleep 50
#   perf sched timehist -i sched.data > th.txt
#   awk -v A='weft-io\\[TID_A' -v B='weft-io\\[TID_B' -f bench/floor/ping-cycles.awk th.txt
#
# A and B are regular expressions for the two daemons' threads (A: the one in
# ping's namespace; try both orders, the wrong one finds no cycles).
function med(arr, n,   i, j, t) {
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
    return n ? arr[int((n + 1) / 2)] : -1
}
$2 != "[0000]" { st = 0; next }
{ task = $3; wait = $4; sd = $5 * 1000; rt = $6 * 1000 }
task ~ /^ping/ && wait > 100 { st = 1; p_rt = rt; p_sd = sd; next }
st == 1 && task ~ A { a1 = rt; a1d = sd; st = 2; next }
st == 2 && task ~ B { b = rt; bd = sd; st = 3; next }
st == 3 && task ~ A { a2 = rt; a2d = sd; st = 4; next }
st == 4 && task ~ /^ping/ {
    n++; P[n] = p_rt; PD[n] = p_sd; A1[n] = a1; A1D[n] = a1d; BB[n] = b; BD[n] = bd
    A2[n] = a2; A2D[n] = a2d; R[n] = rt; RD[n] = sd; st = 0; next
}
st > 0 { st = 0 }
END {
    printf "%d cycles on CPU 0; median µs, run / scheduling delay:\n", n
    printf "  ping send %d / %d\n  A out %d / %d\n  B in + out %d / %d\n  A in %d / %d\n  ping receive %d / %d\n",
        med(P, n), med(PD, n), med(A1, n), med(A1D, n), med(BB, n), med(BD, n), med(A2, n), med(A2D, n), med(R, n), med(RD, n)
}
