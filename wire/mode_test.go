package wire

import "testing"

func TestCompatibleSymmetric(t *testing.T) {
	for a := Mode(0); a < numModes; a++ {
		for b := Mode(0); b < numModes; b++ {
			if Compatible(a, b) != Compatible(b, a) {
				t.Errorf("compat(%v,%v) != compat(%v,%v)", a, b, b, a)
			}
		}
	}
	if Compatible(EX, Mode(9)) || Compatible(Mode(6), NL) {
		t.Error("invalid modes must be compatible with nothing")
	}
}

func TestCovers(t *testing.T) {
	// The DLM lattice: NL < CR < {CW, PR} < PW < EX, CW and PR incomparable.
	down := map[[2]Mode]bool{
		{EX, PW}: true, {EX, PR}: true, {EX, CW}: true, {EX, CR}: true, {EX, NL}: true,
		{PW, PR}: true, {PW, CW}: true, {PW, CR}: true, {PW, NL}: true,
		{PR, CR}: true, {PR, NL}: true, {CW, CR}: true, {CW, NL}: true, {CR, NL}: true,
	}
	for a := Mode(0); a < numModes; a++ {
		for b := Mode(0); b < numModes; b++ {
			want := a == b || down[[2]Mode{a, b}]
			if got := Covers(a, b); got != want {
				t.Errorf("Covers(%v,%v) = %v, want %v", a, b, got, want)
			}
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"ex": EX, "EX": EX, "shared": PR, "Exclusive": EX, "cw": CW, "nl": NL} {
		got, err := ParseMode(in)
		if err != nil || got != want {
			t.Errorf("ParseMode(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseMode("rw"); err == nil {
		t.Error("ParseMode(rw) succeeded")
	}
}
