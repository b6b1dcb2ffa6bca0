// A small chat program over the C++ wrapper (bindings/cpp/bit_ttt.hpp).
//
//   c++ -std=c++17 -Iinclude -Ibindings/cpp examples/cpp/chat.cpp -Ltarget/release -lbit_ttt -o chat
//   ./chat MODEL_DIR            (an empty line or end of input quits)
#include "bit_ttt.hpp"

#include <iostream>
#include <string>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::cerr << "usage: " << argv[0] << " MODEL_DIR\n";
        return 2;
    }
    try {
        auto model = bit_ttt::Model::load(argv[1]);
        bit_ttt::Session session(model);
        bit_ttt::GenerateOptions options;
        options.max_tokens = 128;
        options.on_text = [](std::string_view piece) {
            std::cout << piece << std::flush;
            return true;  // false stops generation
        };
        std::string line;
        while (std::cout << "> " << std::flush, std::getline(std::cin, line) && !line.empty()) {
            std::string prompt = model.apply_chat_template({{"user", line}});
            auto result = session.generate(prompt, options);
            std::cout << "\n[" << result.tokens.size() << " tokens, "
                      << result.tokens.size() / (result.decode_ms / 1000.0 + 1e-9) << " tokens/s]\n";
            session.reset();
        }
    } catch (const bit_ttt::Error &e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
