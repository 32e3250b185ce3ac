<?php
// A known stack, parked in usleep() once set up: <main> -> App\probe_fn -> array_map (C)
// -> a closure (called back from C: a new call of the VM loop) -> App\Cart::checkout -> a
// closure -> usleep (C). The `// @name` markers give the lines the test expects.

namespace App;

class Cart
{
    public function checkout(int $n): int
    {
        $park = function (int $m): int { // @park_start
            fwrite(STDOUT, "ready\n");
            fflush(STDOUT);
            while (true) {
                usleep(100000); // @park
            }
        };
        return $park($n); // @checkout
    }
}

function probe_fn(int $n): array
{
    return array_map(function (int $x) { return (new Cart())->checkout($x); }, [$n]); // @map
}

probe_fn(3); // @main
