from serving.batched.app import main

main()
