// What an instruction-set variant must not contain (ctest checks that check_isa_symbols.py rejects
// it): a std::vector instantiation is a weak symbol the linker would share with every other object.
#include <vector>

std::vector<float> make_buffer(int n) { return std::vector<float>(n, 1.0f); }
