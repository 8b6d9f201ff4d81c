<?php
// cgscope's PHP workload: burns CPU in a known chain until killed.
// Usage: php8.2 -n chain.php func|method
function fid_leaf($n) {
    $x = 0;
    for ($i = 0; $i < $n; $i++) {
        $x += ($i * $i) % 7; // line 7: the hot loop
    }
    return $x;
}
function fid_middle($n) { return fid_leaf($n); }  // line 11
function fid_outer($n) { return fid_middle($n); } // line 12

class Work {
    public function fid_leaf($n) {
        $x = 0;
        for ($i = 0; $i < $n; $i++) {
            $x += ($i * $i) % 7; // line 18
        }
        return $x;
    }
    public function fid_middle($n) { return $this->fid_leaf($n); } // line 22
    public static function fid_outer($n) { return (new Work())->fid_middle($n); } // line 23
}

$mode = $argv[1] ?? 'func';
fwrite(STDOUT, getmypid() . "\n");
while (true) {
    if ($mode === 'method') {
        Work::fid_outer(5000000); // line 30
    } else {
        fid_outer(5000000); // line 32
    }
}
