from pathunlearn.cli import main

main()
